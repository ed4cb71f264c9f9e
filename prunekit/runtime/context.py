"""The run context: how a call runs, in one object.

Everything that says *how* (not *what*) a command computes travels together in one frozen
:class:`RunContext` held in one :class:`contextvars.ContextVar`: the engine tasks run on,
the memory budget, the work directory that records progress for ``--resume``, whether
progress bars are drawn, and how embeddings are read (``key``, ``id_key``,
``allow_external``). The CLI builds one from a command's options and enters it; library
callers change fields for a block::

    import prunekit as pk
    with pk.runtime(memory="2G", id_key="image_id"):
        emb = pk.load_embeddings("shards/")       # ids from 'image_id'
        scores = pk.score(emb, "kmeans", k=100)   # tasks fit in 2 GiB

:func:`runtime` blocks nest and restore the previous context on exit. Being a
``ContextVar``, a context belongs to its thread or asyncio task: two threads (or tasks)
each see their own, and :class:`~prunekit.runtime.engine.LocalEngine` runs every task in
a copy of the caller's context. Library functions read their defaults here; an explicit
argument always wins.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunekit.io import DEFAULT_KEY

if TYPE_CHECKING:
    from prunekit.runtime.engine import Engine
    from prunekit.runtime.resume import WorkDir


@dataclass(frozen=True)
class RunContext:
    """How a call runs. ``None`` fields fall back to a default at the time of use.

    * ``engine`` -- where chunk and cluster tasks run (None: threads, one per core).
    * ``memory`` -- the memory budget in bytes (None: ``PRUNEKIT_MEMORY``, else
      ``min(25 % of available memory, 8 GiB)``; see :mod:`prunekit.runtime.budget`).
    * ``work_dir`` -- where finished units are recorded for ``--resume`` (None: nowhere).
    * ``progress`` -- False silences every progress bar (the CLI's ``--quiet``); a call's
      own ``progress=False`` silences only its bars.
    * ``key``, ``id_key`` -- the dataset/column of the embeddings and of their ids when a
      path is loaded (``id_key`` None: ``ids`` in HDF5/npz, the usual columns in Parquet).
    * ``allow_external`` -- whether HDF5 external links and external storage may be read.
    """

    engine: Engine | None = None
    memory: int | None = None
    work_dir: WorkDir | None = None
    progress: bool = True
    key: str = DEFAULT_KEY
    id_key: str | None = None
    allow_external: bool = False


FIELDS = tuple(f.name for f in dataclasses.fields(RunContext))

_DEFAULT = RunContext()
_CONTEXT: contextvars.ContextVar[RunContext] = contextvars.ContextVar(
    "prunekit_run_context", default=_DEFAULT)


def get_runtime() -> RunContext:
    """The run context in force here (this thread or asyncio task)."""
    return _CONTEXT.get()


def _checked(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` validated and normalised (a size string becomes bytes)."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown run-context field(s) {', '.join(unknown)}; "
                        f"the fields are: {', '.join(FIELDS)}.")
    out = dict(changes)
    if out.get("memory") is not None:
        from prunekit.runtime.budget import parse_size

        out["memory"] = parse_size(out["memory"])
    if isinstance(out.get("work_dir"), (str, os.PathLike)):
        from prunekit.runtime.resume import WorkDir

        out["work_dir"] = WorkDir(out["work_dir"])
    for name in ("progress", "allow_external"):
        if name in out:
            out[name] = bool(out[name])
    if "key" in out and out["key"] is None:
        out["key"] = DEFAULT_KEY
    return out


@contextlib.contextmanager
def use_context(ctx: RunContext) -> Iterator[RunContext]:
    """Make ``ctx`` the run context inside the ``with`` block (restored on exit)."""
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def runtime(**changes: Any) -> contextlib.AbstractContextManager[RunContext]:
    """A ``with`` block whose run context is the current one with ``changes`` applied.

    Fields: ``engine``, ``memory`` (bytes or a size such as ``"4G"``), ``work_dir`` (a
    :class:`~prunekit.runtime.resume.WorkDir` or a path), ``progress``, ``key``, ``id_key``,
    ``allow_external``. Blocks nest; the previous context comes back on exit, also on an
    exception. An unknown field is a TypeError.
    """
    return use_context(dataclasses.replace(get_runtime(), **_checked(changes)))


@contextlib.contextmanager
def runtime_yielding(value: Any, **changes: Any) -> Iterator[Any]:
    """:func:`runtime` with ``changes``, yielding ``value`` (the deprecated ``use`` helpers)."""
    with runtime(**changes):
        yield value


def set_runtime(**changes: Any) -> RunContext:
    """Apply ``changes`` to the current context until it ends (no ``with`` block).

    For the deprecated setters only: a ``with`` block of :func:`runtime` is the way to go.
    """
    ctx = dataclasses.replace(get_runtime(), **_checked(changes))
    _CONTEXT.set(ctx)
    return ctx


def current_engine() -> Engine:
    """The context's engine, else a local one with a worker per core."""
    engine = get_runtime().engine
    if engine is not None:
        return engine
    from prunekit.runtime.engine import LocalEngine

    return LocalEngine()


def current_work_dir() -> WorkDir:
    """The context's work directory, else one that records nothing."""
    work = get_runtime().work_dir
    if work is not None:
        return work
    from prunekit.runtime.resume import WorkDir

    return WorkDir(None)


def load_options(key: str | None = None, id_key: str | None = None) -> tuple[str, str | None]:
    """``(key, id_key)``: the explicit ones, else the context's."""
    ctx = get_runtime()
    return (ctx.key if key is None else key, ctx.id_key if id_key is None else id_key)
