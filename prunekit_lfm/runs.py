"""The run directory of a training run: its config, checkpoints, optimizer state and log.

Layout of ``RUN_DIR``::

    config.json        every setting (TrainConfig), rewritten at each checkpoint (steps_done)
    model.safetensors  the trained weights at steps_done
    ema.safetensors    their exponential moving average (what sampling uses by default)
    optimizer.safetensors  AdamW moment tensors (keys ``state.<param>.<name>``)
    trainer_state.json     step, data-order position, optimizer hyper-parameters
    log.csv            step, loss, lr, time (seconds since the run started)
    train.lock         held (flock) by the process training into the directory

Each file is written atomically (temporary file + rename). The checkpoint files carry
their step, and :func:`read_checkpoint` refuses a directory whose files disagree (a crash
between two renames), so a half-written checkpoint is never used silently.

No file of a run is ever unpickled: weights and optimizer tensors are safetensors, the
rest is JSON, so a run directory received from someone else cannot run code. The random
draws of training are re-derived from (seed, step) (see :mod:`prunekit_lfm.train`), so no
random-generator state needs to be stored. A ``state.pt`` (the pickle format of earlier
versions, or a planted file) is refused, never opened.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path, write_text
from prunekit.params import ParamError, defaults

from .guards import check_finite, writing
from .models import VelocityModel, model_from_config
from .specs import TRAIN_PARAMS

CONFIG = "config.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
LEGACY_STATE = "state.pt"  # pickle: never loaded
LOCK = "train.lock"
LOG = "log.csv"
LOG_FIELDS = ("step", "loss", "lr", "time")


#: Fields every stored config.json must have (the rest have defaults).
_REQUIRED = ("model", "sample_size", "in_channels", "num_classes", "conditional", "latents")
#: The user's settings as a run stores them: ``steps`` may be 0 (a run not yet trained).
_STORED = tuple(replace(p, low=0) if p.name == "steps" else p for p in TRAIN_PARAMS)
_D = defaults(TRAIN_PARAMS)


@dataclass
class TrainConfig:
    """Every setting of a training run: what the user chose and what the data fixed.

    Validated once, when made (by :func:`prunekit_lfm.train.train` before it reads any
    data, and when ``RUN_DIR/config.json`` is read), so a bad number is one clear error.
    Stored as ``RUN_DIR/config.json``. ``model`` is a model spec (preset name, dict or JSON
    path) until the trainer replaces it with :meth:`VelocityModel.config_dict` (spec,
    preset, sample_size, in_channels, num_classes, seed). ``num_classes`` = 0 means
    unconditional; the null label id is ``num_classes``. Time convention of the trained
    model: t = 0 noise, t = 1 data.
    """

    # The user's settings take the defaults of TRAIN_PARAMS (steps: 0 until trained).
    model: Any = _D["model"]
    sample_size: int = 0
    in_channels: int = 0
    num_classes: int = 0
    conditional: bool = _D["conditional"]
    latents: str = ""
    latents_fingerprint: str = ""
    selection: str | None = _D["selection"]
    selection_fingerprint: str | None = None
    vae: str | None = None
    scale_factor: float = 1.0
    image_size: int | None = None
    n_train: int = 0
    steps: int = 0
    steps_done: int = 0
    batch_size: int = _D["batch_size"]
    lr: float = _D["lr"]
    weight_decay: float = _D["weight_decay"]
    ema: float = _D["ema"]
    grad_clip: float = _D["grad_clip"]
    cfg_dropout: float = _D["cfg_dropout"]
    t_schedule: str = _D["t_schedule"]
    seed: int = _D["seed"]
    checkpoint_every: int = _D["checkpoint_every"]
    world_size: int = 1
    prunekit_version: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise PrunekitError("; ".join(problems) + ".")

    def problems(self) -> list[str]:
        """What is wrong with the settings (empty when they are fine): the user's settings by
        their Params (:data:`prunekit_lfm.specs.TRAIN_PARAMS`), the counts the trainer sets."""
        bad = [f"{name} must be an integer (got {value!r})"
               for name, value in (("steps_done", self.steps_done), ("world_size", self.world_size))
               if isinstance(value, bool) or not isinstance(value, int)]
        for p in _STORED:
            try:
                p.check(getattr(self, p.name))
            except ParamError as exc:
                bad.append(str(exc).rstrip("."))
        return bad

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise PrunekitError(f"{source} must hold a JSON object; is it a prunekit run?")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise PrunekitError(f"{source} lacks the fields {', '.join(missing)}; is it a prunekit run?")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except PrunekitError as exc:
            raise PrunekitError(f"{source}: {exc}") from exc


def read_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig of ``run_dir``, or a PrunekitError saying what is missing."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise PrunekitError(f"run directory not found: {run_dir}. Train one with `prunekit lfm train`.")
    if not path.is_file():
        raise PrunekitError(f"{run_dir} has no {CONFIG}; it is not a prunekit training run.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PrunekitError(f"{path} is not valid JSON: {exc}") from exc
    return TrainConfig.from_dict(data, source=str(path))


def write_config(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    write_text(Path(run_dir) / CONFIG, config.to_json())


def _unique_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared tensor once (first name wins), and alias -> kept name.

    Deterministic (state-dict order), so the same weights always give the same file bytes.
    """
    kept: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.device.type != "meta" and key in seen:
            alias[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor
    return kept, alias


def save_weights(path: str | os.PathLike, model: torch.nn.Module, step: int) -> None:
    """Weights as safetensors (shared tensors stored once), tagged with ``step``, atomically."""
    kept, _ = _unique_state(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in kept.items()}
    with writing(path, "weights file"), atomic_path(path) as tmp:  # one metadata key: safetensors
        save_file(tensors, str(tmp), metadata={"step": str(step)})  # writes them in hash order


def weights_step(path: str | os.PathLike) -> int:
    """The step a weights file was saved at."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta.get("step", -1))
    except Exception as exc:  # truncated, foreign or corrupt file
        raise PrunekitError(
            f"cannot read {path}: {exc}. The file is truncated or not a safetensors file; "
            "resume from an intact copy of the run."
        ) from exc


def load_weights(path: str | os.PathLike, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
    """Load a weights file into ``model``; every tensor must be present with its shape."""
    state = _read_safetensors(path, "weights file", device)
    kept, _ = _unique_state(model)
    missing = [k for k in kept if k not in state]
    unexpected = [k for k in state if k not in kept]
    wrong = [k for k in kept if k in state and state[k].shape != kept[k].shape]
    if missing or unexpected or wrong:
        raise PrunekitError(
            f"weights file {path} does not fit the run's model (missing: {missing[:3]}, "
            f"unexpected: {unexpected[:3]}, other shapes: {wrong[:3]}). Was config.json edited?"
        )
    check_finite(state.items(), f"weights file {path}")
    model.load_state_dict(state, strict=False)


def save_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """Write the optimizer's tensors as safetensors; return its other state as JSON-ready data.

    ``state[param][name]`` tensors go to ``path`` under ``state.<param>.<name>``; the
    hyper-parameters (param groups) and any non-tensor state are returned for the JSON file.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    with writing(path, "optimizer state"), atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step)})
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(path: str | os.PathLike, meta: dict[str, Any], optimizer: torch.optim.Optimizer,
                   device: str | torch.device = "cpu") -> None:
    """Restore what :func:`save_optimizer` wrote (tensors from ``path``, the rest from ``meta``)."""
    tensors = _read_safetensors(path, "optimizer state", device)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = meta.get("param_groups")
    try:
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in groups]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError) as exc:
        raise PrunekitError(
            f"optimizer state {path} does not fit the run's model ({exc}); was the run edited?"
        ) from exc


def _read_safetensors(path: str | os.PathLike, what: str, device: str | torch.device = "cpu"
                      ) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises several types for corrupt or foreign files
        raise PrunekitError(
            f"cannot read {what} {path}: {exc}. The file is truncated or not a safetensors file; "
            "resume from an intact copy of the run."
        ) from exc


def write_trainer_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    write_text(Path(run_dir) / TRAINER_STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_trainer_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PrunekitError(f"cannot read training state {path}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise PrunekitError(f"training state {path} has no valid 'step'; was it edited?")
    return state


def read_log(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``log.csv`` as dicts of floats (step as int); empty when there is no log."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            {"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"]), "time": float(r["time"])}
            for r in csv.DictReader(fh)
        ]


def write_log(run_dir: str | os.PathLike, rows: list[dict[str, float]]) -> None:
    """Rewrite ``log.csv`` atomically (losses with full float precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"step": int(r["step"]), "loss": repr(float(r["loss"])),
                         "lr": repr(float(r["lr"])), "time": f"{r['time']:.3f}"})
    write_text(Path(run_dir) / LOG, buf.getvalue())


def read_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The trainer state (JSON) of the last complete checkpoint in ``run_dir``; None when there is none.

    Raises when some checkpoint files are missing, when the files disagree on the step (the
    last write was interrupted between two renames), or when the directory holds a pickled
    ``state.pt``, which is never opened.
    """
    d = Path(run_dir)
    if (d / LEGACY_STATE).exists():
        raise PrunekitError(
            f"cannot resume {run_dir}: it holds {LEGACY_STATE}, a pickle file (the training state of "
            "earlier prunekit versions, or a file someone put there). prunekit never loads pickles, since "
            f"opening one can run code. Delete {d / LEGACY_STATE}; an old-format run cannot be "
            "resumed (its weights still sample), so start a new run."
        )
    files = [d / MODEL, d / EMA, d / OPTIMIZER, d / TRAINER_STATE]
    if not any(f.exists() for f in files):
        return None
    absent = [f.name for f in files if not f.exists()]
    if absent:
        raise PrunekitError(f"run {run_dir} has an incomplete checkpoint (missing {', '.join(absent)}).")
    state = read_trainer_state(d)
    steps = {weights_step(d / MODEL), weights_step(d / EMA), weights_step(d / OPTIMIZER), state["step"]}
    if len(steps) != 1:
        raise PrunekitError(
            f"run {run_dir}: checkpoint files disagree on the step ({sorted(steps)}); "
            "the last write was interrupted. Resume from a copy of an earlier checkpoint."
        )
    return state


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/train.lock``, held while a process trains into it.

    The lock is released when the process exits, however it exits (the kernel drops it
    with the file descriptor), so a crashed run never leaves the directory locked. The lock
    file itself stays (removing it would let a third process lock a stale inode).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        import fcntl

        self.path = Path(run_dir) / LOCK
        self.created_file = not self.path.exists()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise PrunekitError(f"cannot create the lock file {self.path}: {exc.strerror}.") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise PrunekitError(
                f"run directory {run_dir} is in use: another `prunekit lfm train` holds its lock "
                f"{self.path}. Wait for it to finish, or train into another directory."
            ) from None

    def release(self, *, remove: bool = False) -> None:
        """Unlock; ``remove`` deletes the lock file when this lock created it (nothing else ran)."""
        if self.fd < 0:
            return
        if remove and self.created_file:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = -1


def load_run(
    run_dir: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[VelocityModel, TrainConfig]:
    """The trained model of ``run_dir`` (EMA weights by default) in eval mode, and its config.

    The model maps (x, t, y) -> velocity with t = 0 noise, t = 1 data.
    """
    config = read_config(run_dir)
    d = Path(run_dir)
    weights = d / (EMA if ema else MODEL)
    if not weights.is_file():
        raise ParamError("run {} has no {} yet (steps_done={}); train it (it writes a checkpoint "
                         "every {checkpoint_every} steps and at the end).", run_dir, weights.name,
                         config.steps_done)
    try:
        model = model_from_config(config.model, device="cpu")
    except PrunekitError as exc:
        raise PrunekitError(f"{d / CONFIG}: {exc}") from exc
    load_weights(weights, model)
    return model.to(device).eval(), config


def check_same_latents(a: TrainConfig, b: TrainConfig, path_a: str | os.PathLike, path_b: str | os.PathLike) -> None:
    """Coarse run ``a`` and fine run ``b`` must live in one latent space (same VAE and scale)."""
    va = str(Path(a.vae).resolve()) if a.vae else None
    vb = str(Path(b.vae).resolve()) if b.vae else None
    if va != vb or not math.isclose(a.scale_factor, b.scale_factor, rel_tol=1e-6):
        raise ParamError(
            "{coarse:{}} was trained on latents of VAE {} (scale {}) but {fine:{}} on VAE {} (scale "
            "{}); coarse-to-fine needs one latent space. Train both on latents from the same VAE.",
            path_a, a.vae, a.scale_factor, path_b, b.vae, b.scale_factor)
