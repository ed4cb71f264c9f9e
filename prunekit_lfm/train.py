"""The trainer: latent flow matching on (a selection of) a latent store, with exact resume.

One training step (t = 0 noise, t = 1 data):

    x1 = a batch of latents, x0 ~ N(0, I), t ~ U[0, 1] (or logit-normal)
    y  = labels, replaced by the null label with probability cfg_dropout (conditional runs),
         or the null label for every item (unconditional runs)
    loss = mean ||v(x_t, t, y) - (x1 - x0)||^2,   x_t = (1 - t) x0 + t x1

then AdamW, gradient-norm clipping, and an EMA of the weights.

Determinism and exact resume: nothing random depends on the history of a generator.
The data order at step s is a pure function of (seed, s): the global batch is positions
[s B, (s + 1) B) of an endless sequence of epoch permutations (permutation e drawn from
a generator seeded by (seed, e)). The noise, times and label dropout of step s come from
a generator re-seeded by (seed, s). So a run resumed at step s -- model, EMA and
optimizer restored from the checkpoint -- repeats the losses of an uninterrupted run.

Multi-GPU: launched with ``torchrun``, each rank takes every world_size-th item of the
global batch and of its noise (neither depends on the number of ranks), gradients are
averaged by DistributedDataParallel, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import functools
import gc
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit import __version__
from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output
from prunekit.params import ParamError, takes
from prunekit.runtime.memory import check_fits
from prunekit.runtime.progress import counter
from prunekit.selection.subset import load_selection, resolve_rows

from . import runs
from .distributed import Dist, together
from .distributed import barrier as _barrier
from .distributed import setup_dist as _setup_dist
from .distributed import teardown_dist as _teardown_dist
from .fm_path import fm_loss, sample_t
from .guards import check_space, writing
from .latents import LatentStore, load_latents
from .models import VelocityModel, build_model
from .runs import TrainConfig
from .specs import TRAIN_PARAMS

# Settings that must be the same when a run is resumed (steps may grow).
_RESUME_KEYS = (
    "model", "conditional", "latents_fingerprint", "selection_fingerprint", "batch_size", "lr",
    "weight_decay", "ema", "grad_clip", "cfg_dropout", "t_schedule", "seed",
)
LOSS_EVERY = 50  # steps between loss read-backs (progress bar, divergence check)
LOG_ROW_MEMORY = 320  # bytes one log row (a dict of four numbers) takes in memory
LOG_ROW_DISK = 64  # bytes one row of log.csv takes
MAX_CLASSES = 1_000_000  # labels are class indices; a larger one is a data error
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, step) over seeds


def _mixed_seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------- data order


class DataOrder:
    """Which training rows form the global batch of each step: a pure function of (seed, step).

    Endless sequence of epoch permutations of ``n`` rows; step s takes positions
    [s * batch, (s + 1) * batch). :meth:`position` says where that is (epoch, offset).
    """

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch, 0xDA7A))
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def batch_rows(self, step: int) -> torch.Tensor:
        """Row positions (into the training rows) of the global batch of ``step`` (0-based)."""
        pos = step * self.batch + torch.arange(self.batch)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(self.batch, dtype=torch.long)
        for e in torch.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self.permutation(e)[offsets[sel]]
        return out

    def position(self, step: int) -> dict[str, int]:
        """(epoch, offset) of the first item of ``step``: the data-order position."""
        pos = step * self.batch
        return {"epoch": pos // self.n, "offset": pos % self.n}


# ----------------------------------------------------------------------------- setup


def _training_rows(store: LatentStore, latents: str, selection: str | None) -> tuple[np.ndarray, str | None]:
    if selection is None:
        return np.arange(store.n, dtype=np.int64), None
    sel = load_selection(selection)
    rows = resolve_rows(
        sel, store.n, store.ids,
        selection_name=f"selection file {selection}", target_name=f"latents file {latents}",
    )
    if rows.size == 0:
        raise PrunekitError(f"selection file {selection} keeps no rows; nothing to train on.")
    return rows, sel.source_fingerprint or None


def _check_outputs(run_dir: Path, inputs: list[str | None]) -> None:
    """Before any work: the run directory and the files it will hold may not replace an input."""
    if run_dir.exists() and not run_dir.is_dir():
        raise PrunekitError(f"run directory {run_dir} is a file; choose a directory.")
    for name in (runs.CONFIG, runs.MODEL, runs.EMA, runs.OPTIMIZER, runs.TRAINER_STATE, runs.LOG):
        check_output(run_dir / name, inputs=inputs, what="run file")


def _prepare_dir(run_dir: Path, config: TrainConfig, resume: bool) -> TrainConfig:
    """Refuse a used directory without resume; with resume, check the settings agree.

    The lock file of a (finished or running) training does not count as content.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise PrunekitError(f"run directory {run_dir} is a file; choose a directory.")
    has_files = run_dir.exists() and any(p.name != runs.LOCK for p in run_dir.iterdir())
    if not resume:
        if has_files:
            raise ParamError("run directory {} exists and is not empty; pass {resume:=True} to "
                             "continue it or choose a new directory.", run_dir)
        return config
    if not has_files:
        raise ParamError("cannot resume: {} holds no run. Drop {resume:=True} to start one.", run_dir)
    old = runs.read_config(run_dir)
    diff = [k for k in _RESUME_KEYS if getattr(old, k) != getattr(config, k)]
    if diff:
        shown = "; ".join(f"{k}: run has {getattr(old, k)!r}, now {getattr(config, k)!r}" for k in diff)
        raise PrunekitError(f"cannot resume {run_dir} with other settings ({shown}). Use the run's settings.")
    config.created = old.created
    return config


def _check_labels(store: LatentStore, latents: str) -> None:
    """Conditional training needs class indices 0..K-1 (K = max + 1), checked before any write."""
    labels = store.labels
    bad = np.flatnonzero((labels < 0) | (labels >= MAX_CLASSES))
    if bad.size:
        r = int(bad[0])
        raise ParamError(
            "{conditional:=True}: latents file {} has {} label{} outside [0, {}) (first: row {}, "
            "id {}, label {}); labels must be class indices 0..K-1. Relabel the data (e.g. drop "
            "unlabelled rows with a selection) or train without {conditional:=True}.",
            latents, bad.size, "s" * (bad.size > 1), MAX_CLASSES, r, store.ids[r], int(labels[r]))


def _check_sizes(steps: int, batch_size: int, store: LatentStore) -> None:
    """Refuse, with the number, a training whose log or batch cannot fit in memory."""
    check_fits(steps * LOG_ROW_MEMORY, f"the loss log of {steps} steps (one row per step)")
    latent = 4 * int(np.prod(store.shape))
    check_fits(batch_size * latent * 8, f"a batch of {batch_size} latents (inputs, noise and targets)")


def _weights_bytes(net: nn.Module) -> int:
    """Bytes of one weights file of ``net`` (shared tensors counted once)."""
    kept, _ = runs._unique_state(net)
    return sum(t.numel() * t.element_size() for t in kept.values())


def _checkpoint_bytes(weights: int, steps: int, first: bool) -> int:
    """Free space a checkpoint needs: model, EMA and optimizer (2x) on the first write, then
    the largest file (each is replaced atomically, one at a time); the log grows by a row a step."""
    return (4 * weights if first else 2 * weights) + LOG_ROW_DISK * steps


def _remove_run(out: Path) -> None:
    """Delete the files a fresh run wrote (it failed before its first complete checkpoint)."""
    for name in (runs.CONFIG, runs.MODEL, runs.EMA, runs.OPTIMIZER, runs.TRAINER_STATE, runs.LOG):
        with contextlib.suppress(OSError):
            (out / name).unlink()


def _ema_decay(ema: float, step: int) -> float:
    """EMA decay with warm-up: min(ema, (1 + step) / (10 + step)), so short runs average too."""
    return min(ema, (1 + step) / (10 + step))


@torch.no_grad()
def _update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)


# ----------------------------------------------------------------------------- train


@takes(TRAIN_PARAMS)
def train(
    latents: str,
    run_dir: str,
    *,
    model: str | dict[str, Any] = "tiny",
    selection: str | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    ema: float = 0.9999,
    grad_clip: float = 1.0,
    conditional: bool = False,
    cfg_dropout: float = 0.1,
    t_schedule: str = "uniform",
    seed: int = 0,
    checkpoint_every: int = 1000,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> TrainConfig:
    """Train a velocity model on the latents of ``latents`` (rows kept by ``selection``).

    The settings are those of :data:`prunekit_lfm.specs.TRAIN_PARAMS` (their defaults,
    ranges and meaning are declared there; a bad value is a ParamError naming it, before
    any data is read). Writes ``run_dir`` (see :mod:`prunekit_lfm.runs`): a checkpoint every
    ``checkpoint_every`` steps and at the end. ``resume=True`` continues a run from its
    last checkpoint with the same settings (``steps`` may be raised) and reproduces the
    losses an uninterrupted run would have logged. ``batch_size`` is the global batch
    (split over torchrun processes). Returns the final TrainConfig.
    """
    args = locals()
    chosen = {p.name: args[p.name] for p in TRAIN_PARAMS}
    dist = Dist.from_env()
    settings = _settings(chosen, dist)
    out = Path(run_dir)
    _check_outputs(out, [latents, selection])
    store, rows, sel_fp = _training_data(latents, selection, settings)
    net = _build_net(model, store, settings)
    # Before the directory exists: a full disk is refused, not met at the first checkpoint. On
    # every rank (the run directory is on storage they all see), so that all stop together.
    need = _checkpoint_bytes(_weights_bytes(net), steps, first=not resume)
    check_space([(out / runs.OPTIMIZER, need)], "lfm train (checkpoint files)")
    config = _run_config(settings, net, store, latents, selection, rows, sel_fp)
    dev = _setup_dist(dist, device)
    return _train_in(out, config, _Parts(net, store, rows, dist, dev), resume, progress)


def _settings(chosen: dict[str, Any], dist: Dist) -> TrainConfig:
    """The user's settings as a TrainConfig, and a batch that splits over the processes."""
    if chosen["batch_size"] % dist.world_size:
        raise ParamError("{batch_size} must be a positive multiple of the {} processes (got {}).",
                         dist.world_size, chosen["batch_size"])
    settings = {k: v for k, v in chosen.items() if k != "selection"}  # a path, resolved later
    if not settings["conditional"]:  # no label is dropped in an unconditional run
        settings["cfg_dropout"] = 0.0
    return TrainConfig(**settings, world_size=dist.world_size)


def _training_data(latents: str, selection: str | None,
                   settings: TrainConfig) -> tuple[LatentStore, np.ndarray, str | None]:
    """The latent store, the rows to train on and the selection's fingerprint, checked."""
    store = load_latents(latents)
    rows, sel_fp = _training_rows(store, latents, selection)
    if settings.conditional and store.labels is None:
        raise ParamError("{conditional} needs labels, but latents file {} has none.", latents)
    if settings.conditional:
        _check_labels(store, latents)
    _check_sizes(settings.steps, settings.batch_size, store)
    _, h, w = store.shape
    if h != w:
        raise PrunekitError(f"latents file {latents} holds non-square latents {h}x{w}; use square images.")
    return store, rows, sel_fp


def _build_net(model: str | dict[str, Any], store: LatentStore, settings: TrainConfig) -> VelocityModel:
    c, h, _ = store.shape
    num_classes = store.num_classes if settings.conditional else 0
    return build_model(model, sample_size=h, in_channels=c, num_classes=num_classes,
                       seed=settings.seed)


def _run_config(settings: TrainConfig, net: VelocityModel, store: LatentStore, latents: str,
                selection: str | None, rows: np.ndarray, sel_fp: str | None) -> TrainConfig:
    """The run's config.json: the settings and what the data and the model fixed."""
    c, h, _ = store.shape
    return dataclasses.replace(
        settings, model=net.config_dict(), sample_size=h, in_channels=c,
        num_classes=store.num_classes if settings.conditional else 0,
        latents=str(Path(latents).resolve()), latents_fingerprint=store.fingerprint,
        selection=None if selection is None else str(Path(selection).resolve()),
        selection_fingerprint=sel_fp, vae=store.vae, scale_factor=store.scale_factor,
        image_size=store.image_size, n_train=int(rows.size), prunekit_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"shift_factor": store.shift_factor},
    )


@dataclasses.dataclass
class _Parts:
    """What a trainer is made of besides its config."""

    net: VelocityModel
    store: LatentStore
    rows: np.ndarray
    dist: Dist
    dev: torch.device


def _train_in(out: Path, config: TrainConfig, parts: _Parts, resume: bool,
              progress: bool) -> TrainConfig:
    """Train into the run directory ``out`` under its lock (rank 0 holds it): a run refused
    or failed before its first complete checkpoint leaves no trace."""
    dist = parts.dist
    claim = trainer = None
    try:
        if dist.main:  # rank 0 writes, so rank 0 holds the directory's lock
            claim = _Claim(out)
        try:
            config = _prepare_dir(out, config, resume)
            _barrier(dist)  # every rank has checked the directory before rank 0 writes to it
            trainer = _Trainer(config, parts.net, parts.store, parts.rows, out, dist, parts.dev)
            if resume:
                trainer.restore()  # before wrapping: DDP broadcasts rank 0's weights
        except BaseException:
            if claim is not None:  # refused before writing anything
                claim.undo(remove_files=False)
            raise
        try:
            if dist.main and not resume:
                runs.write_config(out, config)
            trainer.wrap_ddp()
            _barrier(dist)
            trainer.run(progress and dist.main)
        except PrunekitError:
            if claim is not None and not resume and not trainer.complete:  # nothing usable
                claim.undo(remove_files=True)
            raise
        trainer.unwrap_ddp()
        _barrier(dist)  # every rank has dropped its reducer before any rank tears down
    finally:
        if trainer is not None:
            trainer.unwrap_ddp()
        if claim is not None:
            claim.lock.release()
        _teardown_dist(dist)
    return trainer.config


class _Claim:
    """The run directory made (with the parents it needed) and locked by rank 0."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created = [p for p in (out, *out.parents) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrunekitError(f"cannot create run directory {out}: {exc.strerror}.") from exc
        self.lock = runs.RunLock(out)

    def undo(self, remove_files: bool) -> None:
        """Leave no trace: the run's files (``remove_files``), the lock, the new folders."""
        if remove_files:
            _remove_run(self.out)
        self.lock.release(remove=True)
        for d in self.created:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                d.rmdir()


class _Batches:
    """This rank's (x1, x0, t, y) of each step: a pure function of (seed, step).

    The random draws are made for the whole global batch from a generator seeded by
    (seed, step) and then sharded like the rows, so training does not depend on the number
    of processes (up to the order of floating-point sums).
    """

    def __init__(self, config: TrainConfig, store: LatentStore, rows: np.ndarray, dist: Dist,
                 dev: torch.device) -> None:
        self.config, self.dist, self.dev = config, dist, dev
        data = torch.from_numpy(store.latents[rows])
        small = data.numel() * 4 < 2**31  # keep the training set on the device when it fits easily
        self.data = data.to(dev) if small else data
        labels = store.labels[rows] if store.labels is not None else np.zeros(rows.size, np.int64)
        self.labels = torch.from_numpy(labels).to(self.data.device)
        self.order = DataOrder(int(rows.size), config.batch_size, config.seed)
        self.gen = torch.Generator(device=dev)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, world, rank = self.config, self.dist.world_size, self.dist.rank
        shard = slice(rank, None, world)
        rows = self.order.batch_rows(step)[shard].to(self.data.device)
        x1 = self.data[rows].to(self.dev, non_blocking=True)
        y = self.labels[rows].to(self.dev)
        g = self.gen.manual_seed(_mixed_seed(cfg.seed, step))
        n = cfg.batch_size
        t = sample_t(n, g, cfg.t_schedule, device=self.dev)[shard]
        x0 = torch.randn((n, *x1.shape[1:]), generator=g, device=self.dev)[shard]
        null = torch.full_like(y, cfg.num_classes)
        if cfg.conditional:
            drop = (torch.rand(n, generator=g, device=self.dev) < cfg.cfg_dropout)[shard]
            y = torch.where(drop, null, y)
        else:
            y = null
        return x1, x0, t, y


class _LossLog:
    """The losses of the steps taken: kept on the device until read back (one sync a flush)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.rows: list[dict[str, float]] = []
        self.pending: list[tuple[int, torch.Tensor, float]] = []

    def add(self, step: int, loss: torch.Tensor, elapsed: float) -> None:
        self.pending.append((step, loss, elapsed))

    def flush(self, dist: Dist) -> tuple[int, float] | None:
        """Move pending losses into the rows (mean over ranks); the first non-finite one's
        (step, loss), if any: the rows stop before it."""
        if not self.pending:
            return None
        losses = torch.stack([loss for _, loss, _ in self.pending]).float()
        if dist.world_size > 1:
            import torch.distributed as tdist

            tdist.all_reduce(losses)
            losses /= dist.world_size
        pending, self.pending = self.pending, []
        for (step, _, elapsed), value in zip(pending, losses.cpu().tolist(), strict=True):
            if not math.isfinite(value):
                return step, value
            self.rows.append({"step": step, "loss": value, "lr": self.lr, "time": elapsed})
        return None


class _Checkpoints:
    """The checkpoint files of a run directory: model, EMA, optimizer, trainer state, log."""

    def __init__(self, out: Path, model: nn.Module, ema: nn.Module,
                 opt: torch.optim.Optimizer, order: DataOrder, dev: torch.device) -> None:
        self.out, self.model, self.ema, self.opt, self.order, self.dev = out, model, ema, opt, order, dev
        self.weights_bytes = _weights_bytes(model)

    def load(self) -> int | None:
        """Load the last checkpoint into the model, EMA and optimizer; its step (None: none)."""
        state = runs.read_checkpoint(self.out)
        if state is None:
            return None
        step = int(state["step"])
        if state.get("data_position") != self.order.position(step):
            raise PrunekitError(
                f"run {self.out}: the data position in {runs.TRAINER_STATE} "
                f"({state.get('data_position')}) is not where step {step} of this data order "
                "starts; the selection or batch size changed. Resume with the run's own settings."
            )
        runs.load_weights(self.out / runs.MODEL, self.model, self.dev)
        runs.load_weights(self.out / runs.EMA, self.ema, self.dev)
        runs.load_optimizer(self.out / runs.OPTIMIZER, state["optimizer"], self.opt, self.dev)
        return step

    def save(self, step: int, log: list[dict[str, float]], config: TrainConfig) -> None:
        """Rank 0's part of a checkpoint: check the free space, then write every file."""
        d = self.out
        need = _checkpoint_bytes(self.weights_bytes, step, first=not (d / runs.MODEL).exists())
        check_space([(d / runs.OPTIMIZER, need)], f"checkpoint of step {step}")
        with writing(d, f"the checkpoint of step {step} into"):
            runs.save_weights(d / runs.MODEL, self.model, step)
            runs.save_weights(d / runs.EMA, self.ema, step)
            optimizer = runs.save_optimizer(d / runs.OPTIMIZER, self.opt, step)
            runs.write_trainer_state(d, {
                "step": step,
                "optimizer": optimizer,
                "data_position": self.order.position(step),
            })
            runs.write_log(d, log)
            runs.write_config(d, config)


class _Trainer:
    """The state of one training process: model, EMA, optimizer, data, log."""

    def __init__(self, config: TrainConfig, net: VelocityModel, store: LatentStore, rows: np.ndarray,
                 out: Path, dist: Dist, dev: torch.device) -> None:
        self.config, self.out, self.dist, self.dev = config, out, dist, dev
        self.model = net.to(dev).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                     weight_decay=config.weight_decay)
        self.batch = _Batches(config, store, rows, dist, dev)
        self.labels, self.order = self.batch.labels, self.batch.order
        self.losses = _LossLog(config.lr)
        self.step = 0
        self.t_offset = 0.0
        self.saved_step: int | None = None
        self.complete = False  # a whole checkpoint has been written by this process
        self.files = _Checkpoints(out, self.model, self.ema, self.opt, self.order, dev)
        self.ddp: nn.Module = self.model  # what the loss calls: the model or its DDP wrapper

    def wrap_ddp(self) -> None:
        """Under torchrun: average gradients over the processes (needs the process group)."""
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def unwrap_ddp(self) -> None:
        """Drop the DDP wrapper while the process group still exists.

        A DDP reducer that outlives ``destroy_process_group`` holds the last reference to the
        gloo group, whose destructor then waits forever for threads talking to a peer that
        has already exited (seen as a rank hanging after a finished training).
        """
        if self.ddp is not self.model:
            self.ddp = self.model
            gc.collect()

    def restore(self) -> None:
        """Load the last checkpoint (if any) and the log up to it."""
        step = self.files.load()
        if step is None:  # stopped before its first checkpoint: start over
            return
        self.step = self.saved_step = step
        self.complete = True
        self.losses.rows = [r for r in runs.read_log(self.out) if r["step"] <= self.step]
        self.t_offset = self.losses.rows[-1]["time"] if self.losses.rows else 0.0

    def train_step(self, step: int) -> torch.Tensor:
        x1, x0, t, y = self.batch(step)
        cuda = self.dev.type == "cuda"
        with torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = fm_loss(self.ddp, x1, x0, t, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.opt.step()
        _update_ema(self.ema, self.model, _ema_decay(self.config.ema, step))
        return loss.detach()

    def run(self, progress: bool) -> None:
        cfg = self.config
        start = time.perf_counter() - self.t_offset
        with counter(max(cfg.steps - self.step, 0), desc="train", progress=progress) as bar:
            while self.step < cfg.steps:
                loss = self.train_step(self.step)
                self.step += 1
                self.losses.add(self.step, loss, time.perf_counter() - start)
                bar.update(1)
                if self.step % LOSS_EVERY == 0:  # one device sync per LOSS_EVERY steps
                    self.flush_log()
                    bar.set_postfix(loss=f"{self.losses.rows[-1]['loss']:.4f}", refresh=False)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.checkpoint()
        if self.saved_step != self.step:  # e.g. steps=0: still leave a loadable run
            self.checkpoint()

    def flush_log(self) -> None:
        """Read the pending losses back; a non-finite one stops the training, saving nothing."""
        bad = self.losses.flush(self.dist)
        if bad is None:
            return
        kept = (f"the last checkpoint (step {self.saved_step}) in {self.out} is intact"
                if self.complete else "nothing was kept")
        raise ParamError("training diverged: the loss is {} at step {}; stopped without saving "
                         "non-finite weights ({}). Lower {lr}, keep {grad_clip} on, or check the "
                         "latents.", bad[1], bad[0], kept)

    def checkpoint(self) -> None:
        """Write weights, EMA, optimizer, trainer state, log, then config (steps_done) -- rank 0 only.

        Nothing random needs saving: every draw of step s comes from (seed, s).
        """
        self.flush_log()
        self.config.steps_done = self.step
        save = functools.partial(self.files.save, self.step, self.losses.rows, self.config)
        together(self.dist, save, main_only=True)  # all ranks hear of a failure
        self.saved_step = self.step
        self.complete = True
