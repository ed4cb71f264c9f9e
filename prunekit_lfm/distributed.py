"""Running a plug-in command as W processes under ``torchrun``.

``lfm train`` splits every global batch over the processes (DDP). The per-item commands
(``lfm encode``, ``lfm embed``, ``lfm score``) split whole batches instead:

* batch b (rows [b B, (b + 1) B), B the batch size) goes to rank b mod W. Batch boundaries
  come from the data and the batch size, never from W, so every batch is computed on the
  same rows a single process would use and gives the same numbers;
* nothing random depends on the rank (the commands draw nothing per item, or draw it from
  the seed and the item's global position);
* each rank saves its batches as ``.npy`` parts in a folder beside the output
  (``OUTPUT.parts/``); once every rank has finished, rank 0 reads them back in batch order
  and writes the output (atomically). Other ranks write nothing final.

So W processes write the same arrays as one. The parts folder must be on storage every
node sees when the job spans several machines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path
from prunekit.io.npzio import load_npy

from .devices import pick_device

T = TypeVar("T")


@dataclass
class Dist:
    """The process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup_dist(dist: Dist, device: str | torch.device | None) -> torch.device:
    """Join the torchrun job's process group; the device this rank computes on.

    One process: ``device`` as given. Under torchrun: when ``device`` means a GPU (``auto``
    on a machine with one, ``cuda``, ``cuda:N``), the GPU of the local rank (nccl), whatever
    index was named; otherwise the CPU (gloo).
    """
    if dist.world_size == 1:
        return pick_device(device)
    import torch.distributed as tdist

    if pick_device(device).type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        dev, backend = torch.device("cuda", dist.local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend)
    return dev


def barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()


def teardown_dist(dist: Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str | torch.device | None) -> Iterator[tuple[Dist, torch.device]]:
    """``(dist, device)`` of this process, inside the torchrun job's process group."""
    dist = Dist.from_env()
    dev = setup_dist(dist, device)
    try:
        yield dist, dev
    finally:
        teardown_dist(dist)


def _any_failed(dist: Dist, failed: bool) -> bool:
    """True on every rank when ``failed`` is true on any rank (a collective: all must call)."""
    import torch.distributed as tdist

    on = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([int(failed)], device=on)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return bool(flag.item())


def together(dist: Dist, fn: Callable[[], T], *, main_only: bool = False) -> T | None:
    """Run ``fn`` on every rank (or rank 0 only), then agree whether it worked everywhere.

    A rank whose ``fn`` raised re-raises its error; the others raise a short error pointing
    to it, so that every process of the job stops with status 2 instead of waiting forever.
    """
    result, error = None, None
    if dist.main or not main_only:
        try:
            result = fn()
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            error = exc
    if dist.world_size > 1 and _any_failed(dist, error is not None) and error is None:
        raise PrunekitError(f"process {dist.rank}: another process of this torchrun job failed "
                            "(its error is printed too); the output was not written.")
    if error is not None:
        raise error
    return result


# ----------------------------------------------------------------------------- batches


def batch_starts(n: int, batch_size: int, dist: Dist) -> range:
    """First rows of this rank's batches: batch b = rows [b B, (b + 1) B) goes to rank b mod W."""
    return range(dist.rank * batch_size, n, dist.world_size * batch_size)


def part_path(folder: Path, start: int) -> Path:
    """The part holding the batch that starts at row ``start``."""
    return folder / f"part-{start:012d}.npy"


def save_part(folder: Path, start: int, block: np.ndarray) -> None:
    """Write one batch's result atomically (a killed process leaves no torn part)."""
    with atomic_path(part_path(folder, start)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(block), allow_pickle=False)


def load_part(folder: Path, start: int, rows: int) -> np.ndarray:
    """The part of the batch at ``start``; it must hold ``rows`` rows."""
    path = part_path(folder, start)
    try:
        block = load_npy(path)
    except (OSError, ValueError) as exc:
        raise PrunekitError(f"cannot read {path} ({exc}); delete {folder} and run again.") from exc
    if block.ndim < 1 or block.shape[0] != rows:
        raise PrunekitError(f"{path} holds {block.shape[0] if block.ndim else 0} rows, not {rows}; "
                            f"delete {folder} and run again.")
    return block


@dataclass
class Shards:
    """Batches spread over the ranks of a torchrun job, merged in batch order on rank 0.

    With one process everything stays in memory and no folder is used.
    """

    dist: Dist
    folder: Path | None = None  # the parts folder (world_size > 1)
    made: bool = False  # rank 0 created the folder (and removes it)

    @classmethod
    @contextlib.contextmanager
    def beside(cls, output: str | os.PathLike, dist: Dist) -> Iterator[Shards]:
        """Shards keeping their parts in ``OUTPUT.parts/`` (W > 1), removed at the end."""
        shards = cls(dist, Path(str(output) + ".parts") if dist.world_size > 1 else None)
        try:
            yield shards
        finally:
            if shards.made:
                shutil.rmtree(shards.folder, ignore_errors=True)

    def starts(self, n: int, batch_size: int) -> range:
        return batch_starts(n, batch_size, self.dist)

    def gather(self, blocks: Iterable[tuple[int, np.ndarray]], n: int, batch_size: int) -> np.ndarray | None:
        """This rank's ``(start, block)`` results -> all ``n`` rows in order on rank 0, None elsewhere."""
        if n == 0:
            raise PrunekitError("the input holds no items; nothing to do.")
        if self.folder is None:
            return np.concatenate([block for _, block in blocks])
        folder = self.folder
        together(self.dist, self._make, main_only=True)

        def save_all() -> None:
            for start, block in blocks:
                save_part(folder, start, block)

        together(self.dist, save_all)  # every rank has saved its parts when this returns
        if not self.dist.main:
            return None
        return np.concatenate([load_part(folder, a, min(batch_size, n - a))
                               for a in range(0, n, batch_size)])

    def _make(self) -> None:
        """Rank 0 creates the parts folder; one left by a killed job is the user's to delete."""
        assert self.folder is not None
        if self.folder.exists():
            raise PrunekitError(f"{self.folder} exists (left by an interrupted run of this output?); "
                                "delete it and run again.")
        try:
            self.folder.mkdir()
        except OSError as exc:
            raise PrunekitError(f"cannot create {self.folder}: {exc.strerror}.") from exc
        self.made = True
