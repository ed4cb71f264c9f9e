"""Execution engines: map a function over row chunks (or clusters), results in a fixed order.

Methods are written against one small interface, :meth:`Engine.map`: call
``fn(shared, item)`` for every item (a chunk of rows, a cluster, ...) and yield the
results **in item order**, whatever order the workers finish in. Callers combine the
results in that order, so a sum over chunks is always added up the same way. Two
implementations:

* :class:`LocalEngine` -- threads on this machine (BLAS, faiss and ``pread`` release the
  GIL; h5py serialises its reads, the computation still overlaps); ``workers=1`` runs
  inline.
* :class:`RayEngine` -- tasks on a Ray cluster. ``shared`` is put into the object store
  once per map; each task opens the shards it reads itself (a source object is a few paths
  and offsets), so the matrix never travels through the driver. Data that many maps use
  (an in-memory k-means sample) is put once with :meth:`Engine.share`.

:meth:`Engine.reduce` adds the results up by a fixed tree instead of returning them: on
Ray the partial results stay in the object store and are combined by tasks, so the driver
receives the root only (k-means' per-centroid sums at large k).

Determinism contract: chunk boundaries come from the data (never from ``workers``), every
task runs its BLAS single-threaded (so a chunk's floating-point result does not depend on
how many threads the machine has), and every random draw is keyed by
:func:`prunekit.seeds.role_rng` (seed, role, chunk or cluster id). Local,
``ray --workers 1`` and ``ray --workers 8`` therefore write the same bytes.

The engine a method uses is the run context's (:mod:`prunekit.runtime.context`: the CLI's
``--engine``, or ``prunekit.runtime(engine=...)``), else a local engine with one worker per
core; no other code knows which engine runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
import os
import socket
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

from prunekit.errors import PrunekitError
from prunekit.runtime.context import current_engine, runtime_yielding
from prunekit.runtime.progress import track

ENGINES = ("local", "ray")
RAY_MAX_RETRIES = 3  # a task whose worker dies is re-run this many times before failing
CONNECT_TIMEOUT_S = 5.0
MAX_WORKERS = 4096  # threads or Ray tasks in flight; more is a typo, not a cluster
IN_FLIGHT_PER_WORKER = 2  # bounded look-ahead: results wait in order, memory stays O(workers)

Fn = Callable[[Any, Any], Any]


class Engine:
    """Maps ``fn(shared, item)`` over items and yields the results in item order."""

    name = "engine"
    workers = 1

    def map(self, fn: Fn, items: Iterable[Any], shared: Any = None, *, desc: str = "",
            progress: bool = True, limit: int | None = None,
            task_bytes: int | None = None, cpus: int = 1) -> TaskResults:
        """``fn(shared, item)`` for every item, yielded in item order.

        ``fn`` must be a module-level function (it is pickled for Ray). ``task_bytes`` is
        the peak memory of one call: then only as many calls run at a time as fit in the
        memory budget (:func:`tasks_fitting`), at least one. ``limit`` caps the calls at a
        time further. ``cpus``: threads one call runs (its own pool; at most
        :attr:`max_task_cpus`), reserved for it so that calls do not oversubscribe the
        cores. None of them changes the results, only how many are computed at once.

        Consume the results in a ``with`` block (or exhaust them, e.g. with ``list``):
        leaving the block, by an early stop or by an error the caller raises, starts no
        further call and waits for those in flight, so no call outlives the map (one still
        running would write after the caller has cleaned up).
        """
        return TaskResults(self._map(fn, items, shared, desc=desc, progress=progress,
                                     limit=limit, task_bytes=task_bytes, cpus=cpus))

    def _map(self, fn, items, shared, *, desc, progress, limit, task_bytes, cpus):
        """The engine's generator behind :meth:`map`; its ``finally`` stops the calls."""
        raise NotImplementedError

    def reduce(self, fn: Fn, items: Iterable[Any], shared: Any = None, *,
               combine: Callable[[list], Any], fan_in: int, desc: str = "",
               progress: bool = True, limit: int | None = None,
               task_bytes: int | None = None) -> Any:
        """``fn(shared, item)`` for every item, added up by a fixed tree; returns the root.

        Consecutive runs of ``fan_in`` results (in item order; the last run may be shorter)
        are combined by ``combine(list)`` (a module-level function), then consecutive runs
        of ``fan_in`` of those, and so on until one value is left; ``combine`` runs at least
        once, also on a single item. The tree follows ``len(items)`` and ``fan_in`` only, so
        the result is the same on every engine and worker count. Here the combines run on
        the caller's thread as the results come in (memory: ``fan_in`` values per level);
        Ray combines in tasks next to the results and sends the driver the root alone.
        """
        items = list(items)
        fold = _TreeFold(len(items), fan_in, combine)
        with self.map(fn, items, shared, desc=desc, progress=progress, limit=limit,
                      task_bytes=task_bytes) as results:
            for value in results:
                fold.push(value)
        return fold.root()

    @contextlib.contextmanager
    def share(self, obj: Any) -> Iterator[Any]:
        """A handle to pass (alone, or as an element of a ``shared`` tuple) to many maps:
        ``obj`` is sent to the workers once, not with every map. Tasks receive ``obj``
        itself. Here the handle is ``obj``; Ray puts it into the object store once and
        releases it when the block ends."""
        yield obj

    @property
    def max_task_cpus(self) -> int:
        """The most threads one call may run (``cpus`` of :meth:`map`)."""
        return self.workers

    in_flight_per_worker = IN_FLIGHT_PER_WORKER

    def _window(self, limit: int | None, task_bytes: int | None = None, cpus: int = 1) -> int:
        window = max(1, self.workers // max(1, int(cpus))) * self.in_flight_per_worker
        if task_bytes is not None:
            window = min(window, tasks_fitting(task_bytes))
        return window if limit is None else max(1, min(window, int(limit)))

    def close(self) -> None:
        """Release what the engine started (a local Ray cluster); idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _single_threaded(fn: Fn, shared: Any, item: Any) -> Any:
    with threadpool_limits(limits=1):
        return fn(_resolved(shared), item)


def _combined(combine: Callable[[list], Any], *parts: Any) -> Any:
    """A Ray task of :meth:`Engine.reduce`: ``combine`` on the parts (passed as arguments,
    so that Ray hands the task their values)."""
    with threadpool_limits(limits=1):
        return combine(list(parts))


def tree_sizes(n: int, fan_in: int) -> list[int]:
    """Values on each level of :meth:`Engine.reduce`'s tree: ``n`` leaves, then
    ``ceil(previous / fan_in)`` until one (at least one level above the leaves)."""
    if n < 1 or (fan_in < 2 and n > 1):
        raise ValueError(f"a tree needs n >= 1 items and fan_in >= 2 (got {n}, {fan_in})")
    sizes = [n]
    while len(sizes) == 1 or sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // max(1, fan_in)))
    return sizes


class _TreeFold:
    """The fixed tree of :meth:`Engine.reduce`, fed leaf by leaf in item order.

    Each level keeps at most ``fan_in`` values; a full run (or the last, shorter one of its
    level) is combined at once and moves up. ``combine`` may return a placeholder (a Ray
    reference) as well as a value.
    """

    def __init__(self, n: int, fan_in: int, combine: Callable[[list], Any]) -> None:
        self.sizes = tree_sizes(n, fan_in)
        self.fan_in, self.combine = fan_in, combine
        self.runs: list[list] = [[] for _ in self.sizes]
        self.seen = [0] * len(self.sizes)

    def push(self, value: Any) -> None:
        level = 0
        while True:
            run = self.runs[level]
            run.append(value)
            self.seen[level] += 1
            if level == len(self.sizes) - 1:
                return  # the root
            if len(run) < self.fan_in and self.seen[level] < self.sizes[level]:
                return
            value, self.runs[level] = self.combine(run), []
            level += 1

    def root(self) -> Any:
        if self.seen[-1] != 1:
            raise RuntimeError("the tree has not received all its leaves")
        return self.runs[-1][0]


class LocalEngine(Engine):
    """Threads on this machine; ``workers=1`` runs every call inline."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = resolve_workers(workers)

    def _map(self, fn, items, shared, *, desc, progress, limit, task_bytes, cpus):
        items = list(items)
        total = len(items)
        window = self._window(limit, task_bytes, cpus)
        if self.workers == 1 or window == 1:
            with threadpool_limits(limits=1):
                for item in track(items, total=total, desc=desc, progress=progress):
                    yield fn(shared, item)
            return

        def submit(item):  # each task sees the caller's run context (threads start empty)
            return pool.submit(contextvars.copy_context().run, fn, shared, item)

        with ThreadPoolExecutor(min(self.workers, window)) as pool, threadpool_limits(limits=1):
            pending: deque = deque()
            it = iter(items)
            for item in it:
                pending.append(submit(item))
                if len(pending) >= window:
                    break
            try:
                for _ in track(range(total), total=total, desc=desc, progress=progress):
                    result = pending.popleft().result()
                    nxt = next(it, _END)
                    if nxt is not _END:
                        pending.append(submit(nxt))
                    yield result
            finally:  # a failure or an early stop: drop queued calls, wait for running ones
                for fut in pending:
                    fut.cancel()


_END = object()


class TaskResults(Iterator):
    """The results of one :meth:`Engine.map`, in item order; a context manager whose exit
    stops the map's calls (:meth:`close`)."""

    def __init__(self, results: Iterator[Any]) -> None:
        self._results = results

    def __next__(self) -> Any:
        return next(self._results)

    def close(self) -> None:
        """Start no further call and wait for those in flight (an interrupt on Ray cancels
        them)."""
        self._results.close()

    def __enter__(self) -> TaskResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayEngine(Engine):
    """Tasks on a Ray cluster: ``address`` joins one (``auto`` = the one ``ray start`` made).

    Without an address a local cluster of ``workers`` CPUs starts here and stops in
    :meth:`close`; it listens on 127.0.0.1 only (:func:`_loopback_node`) and, on a Ray
    with token authentication, requires Ray's token. ``quiet``: Ray's own log lines below
    ERROR (and its workers' output) are not shown, as for the CLI's ``--quiet``.
    At most ``workers`` tasks run at a time (default: the cluster's CPUs).
    A task whose worker dies is retried ``RAY_MAX_RETRIES`` times; after that, or when a
    task raises, the error surfaces as a :class:`PrunekitError` and nothing is written.
    """

    name = "ray"
    in_flight_per_worker = 1  # a queued Ray task would run on a free CPU: --workers caps both

    def __init__(self, workers: int | None = None, address: str | None = None, *,
                 quiet: bool = False):
        ray = import_ray()
        self._owns = False
        logs = {"include_dashboard": False, "log_to_driver": not quiet,
                "logging_level": logging.ERROR if quiet else logging.WARNING}
        if not ray.is_initialized():
            if address:
                _check_reachable(address)
                here = _is_loopback(address)  # a cluster on this machine's loopback: join there
                try:
                    with _loopback_node() if here else contextlib.nullcontext():
                        ray.init(address=address, _node_ip_address=LOOPBACK if here else None,
                                 **logs)
                except (ConnectionError, RuntimeError, ValueError,
                        ray.exceptions.AuthenticationError) as exc:
                    why = str(exc).rstrip(".")
                    raise PrunekitError(
                        f"cannot join the Ray cluster at --ray-address {address}: {why}. "
                        "Start one with 'ray start --head' or leave --ray-address out; a "
                        "cluster with token authentication also needs RAY_AUTH_MODE=token and "
                        "its token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH)."
                    ) from exc
            else:
                with _loopback_node():
                    ray.init(num_cpus=resolve_workers(workers), _node_ip_address=LOOPBACK,
                             **logs)
            self._owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(workers)) if workers else max(1, cpus)
        self._ray = ray
        self._task = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(_single_threaded)
        self._combine = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(_combined)

    def _map(self, fn, items, shared, *, desc, progress, limit, task_bytes, cpus):
        ray = self._ray
        items = list(items)
        total = len(items)
        shared_ref = ray.put(shared)
        task = self._task_for(cpus)
        window = self._window(limit, task_bytes, cpus)
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(task.remote(fn, shared_ref, item))
            if len(pending) >= window:
                break
        interrupted = False
        try:
            for _ in track(range(total), total=total, desc=desc, progress=progress):
                result = self._get(pending.popleft())
                nxt = next(it, _END)
                if nxt is not _END:
                    pending.append(task.remote(fn, shared_ref, nxt))
                yield result
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self._stop(pending, interrupted)  # a failure or an early stop: no work left running

    def reduce(self, fn, items, shared=None, *, combine, fan_in, desc="", progress=True,
               limit=None, task_bytes=None):
        """As :meth:`Engine.reduce`; the leaves and the combines are tasks that pass
        references, and only the root comes to the driver."""
        ray = self._ray
        items = list(items)
        shared_ref = ray.put(shared)
        # Only the references not yet handed to a combine are held here (pending leaves, the
        # tree's open runs): a combined part is freed once its combine has run.
        fold = _TreeFold(len(items), fan_in,
                         lambda refs: self._combine.remote(combine, *refs))
        window = self._window(limit, task_bytes)
        pending: deque = deque()
        try:
            for item in track(items, total=len(items), desc=desc, progress=progress):
                if len(pending) >= window:  # bounded leaves at a time: wait for the oldest
                    ray.wait([pending[0]], num_returns=1, fetch_local=False)
                    fold.push(pending.popleft())
                pending.append(self._task.remote(fn, shared_ref, item))
            while pending:
                fold.push(pending.popleft())
            return self._get(fold.root())
        except BaseException as exc:  # a failure or an interrupt: do not leave work running
            self._stop([*pending, *(ref for run in fold.runs for ref in run)],
                       isinstance(exc, KeyboardInterrupt))
            raise

    def _stop(self, refs: list, interrupted: bool) -> None:
        """End a map's outstanding calls (at most its window, plus a reduce's open combines).

        An interrupt cancels them: the user wants out now. A failure or an early stop waits
        for them and drops their results, as the local engine does: cancelling a call just
        as it completes can abort the driver inside Ray's core worker ("Check failed ...
        Tried to complete task that was not pending", Ray issue 54846).
        """
        refs = list(refs)
        if not refs:
            return
        if interrupted:
            for ref in refs:
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
            return
        with contextlib.suppress(Exception):  # their errors are not this map's to report
            self._ray.wait(refs, num_returns=len(refs), fetch_local=False)

    @contextlib.contextmanager
    def share(self, obj):
        handle = _Shared(self._ray.put(obj))
        try:
            yield handle
        finally:
            handle.ref = None  # Ray frees the object once no task holds it either

    @property
    def max_task_cpus(self) -> int:
        """The CPUs of the largest live node (a task cannot span nodes)."""
        cpus = [node.get("Resources", {}).get("CPU", 0) for node in self._ray.nodes()
                if node.get("Alive")]
        return max(1, int(max(cpus, default=1)))

    def _task_for(self, cpus: int):
        cpus = max(1, min(int(cpus), self.max_task_cpus)) if cpus > 1 else 1
        return self._task if cpus == 1 else self._task.options(num_cpus=cpus)

    def _get(self, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
                raise cause from None  # the task's own error, e.g. a PrunekitError naming a shard
            raise PrunekitError(f"a Ray task failed: {exc}") from exc
        except ray.exceptions.RayError as exc:
            raise PrunekitError(
                f"a Ray task could not finish after {RAY_MAX_RETRIES} retries "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check the workers' memory and logs, then run the command again "
                "(with --resume to keep the work done so far)."
            ) from exc

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


class _Shared:
    """A Ray engine's handle of :meth:`RayEngine.share`: the object's reference, which a task
    exchanges for the object (:func:`_resolved`)."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def get(self) -> Any:
        if self.ref is None:
            raise RuntimeError("a shared object was used after its share() block ended")
        import ray

        return ray.get(self.ref)


def _resolved(shared: Any) -> Any:
    """``shared`` with :class:`_Shared` handles (itself, or elements of a tuple) replaced by
    their objects, as a task sees it."""
    if isinstance(shared, _Shared):
        return shared.get()
    if type(shared) is tuple and any(isinstance(x, _Shared) for x in shared):
        return tuple(x.get() if isinstance(x, _Shared) else x for x in shared)
    return shared


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Let Ray keep 127.0.0.1 as this node's address (a cluster started here, or one joined
    at a loopback address), so that it listens there only and finds a loopback head.

    Ray binds its servers (GCS, raylet, object manager, workers) to every interface unless
    the node address is exactly 127.0.0.1, and ``ray.init(_node_ip_address="127.0.0.1")``
    alone does not get there: Ray swaps a loopback address for the machine's network one
    unless it runs in its one-machine mode (``ray_constants.ENABLE_RAY_CLUSTER`` off, what
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets). That mode is held on while the cluster
    starts. tests/test_ray.py checks with ``ss`` that no listener of ours is elsewhere.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # another Ray layout: the node address is passed all the same
        yield
        return
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names a loopback host (Ray would swap it for the network one)."""
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str) -> None:
    """Fail fast on a head node that does not answer (Ray itself waits minutes)."""
    if address == "auto":
        return  # Ray finds the local cluster or says there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PrunekitError(f"--ray-address {address} is not HOST:PORT (or 'auto').")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise PrunekitError(
            f"no Ray head answers at --ray-address {address} ({exc.strerror or exc}); start one "
            "with 'ray start --head' there, or leave --ray-address out for a local cluster."
        ) from None


def import_ray():
    """The ``ray`` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise PrunekitError(
            "--engine ray needs Ray: pip install \"prunekit[ray]\" (or pip install 'ray>=2.9')."
        ) from None
    return ray


def resolve_workers(workers: int | None) -> int:
    """``None`` -> one worker per core this process may use; else checked >= 1."""
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # macOS
            return max(1, os.cpu_count() or 1)
    if not 1 <= int(workers) <= MAX_WORKERS:
        raise PrunekitError(f"workers must be in [1, {MAX_WORKERS}] (got {workers}).")
    return int(workers)


def make_engine(name: str = "local", *, workers: int | None = None,
                ray_address: str | None = None, quiet: bool = False) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``); ``quiet`` silences Ray's log lines."""
    if name == "local":
        if ray_address:
            raise PrunekitError("--ray-address needs --engine ray.")
        return LocalEngine(workers)
    if name == "ray":
        return RayEngine(workers, ray_address, quiet=quiet)
    raise PrunekitError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINES)}.")


def tasks_fitting(task_bytes: int, budget: int | None = None) -> int:
    """How many tasks of ``task_bytes`` each fit in ``budget`` (default: the memory budget).

    At least one: a task that alone exceeds the budget is refused by its caller, with the
    numbers, before any work (e.g. the largest cluster of ``--within``).
    """
    from prunekit.runtime.budget import memory_budget

    budget = memory_budget() if budget is None else int(budget)
    return max(1, budget // max(1, int(task_bytes)))


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"prunekit.runtime.engine.{old} is deprecated; use {new}.",
                  DeprecationWarning, stacklevel=3)


def current() -> Engine:
    """Deprecated: ``prunekit.runtime.context.current_engine()``."""
    _deprecated("current()", "prunekit.runtime.context.current_engine()")
    return current_engine()


def use(engine: Engine) -> contextlib.AbstractContextManager[Engine]:
    """Deprecated: ``with prunekit.runtime(engine=engine)``."""
    _deprecated("use()", "prunekit.runtime(engine=...)")
    return runtime_yielding(engine, engine=engine)


# --------------------------------------------------------------------------- row chunks

CHUNK_BYTES = 32 << 20  # float32 bytes of one chunk: its size follows the data's width only
MIN_CHUNK_ROWS = 1024


def chunk_rows_for(dim: int) -> int:
    """Rows per chunk for rows of ``dim`` values: a power of two near CHUNK_BYTES of float32.

    It depends on the data alone (never on the workers or the memory budget), so every
    engine cuts the same chunks and combines the same partial results.
    """
    rows = max(1, CHUNK_BYTES // (4 * max(1, int(dim))))
    return max(MIN_CHUNK_ROWS, 1 << (rows.bit_length() - 1))
