"""The run directory of a training run: its config, checkpoints, optimizer state and log.

Layout of ``RUN_DIR``::

    config.json        every setting (RunConfig), rewritten at each checkpoint (steps_done)
    model.safetensors  the trained weights at steps_done
    ema.safetensors    their exponential moving average (what sampling uses by default)
    state.pt           optimizer state, step, data-order position, RNG states
    log.csv            step, loss, lr, time (seconds since the run started)

Each file is written atomically (temporary file + rename). The checkpoint files carry
their step, and :func:`load_run` refuses a directory whose files disagree (a crash between
two renames), so a half-written checkpoint is never used silently.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prunekit.atomic import atomic_path, write_text
from prunekit.errors import PrunekitError

from .models import VelocityModel, model_from_config

CONFIG = "config.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
STATE = "state.pt"
LOG = "log.csv"
LOG_FIELDS = ("step", "loss", "lr", "time")


@dataclass
class RunConfig:
    """Every setting of a training run, as stored in ``RUN_DIR/config.json``.

    ``model`` is :meth:`VelocityModel.config_dict` (spec, preset, sample_size, in_channels,
    num_classes, seed). ``num_classes`` = 0 means unconditional; the null label id is
    ``num_classes``. Time convention of the trained model: t = 0 noise, t = 1 data.
    """

    model: dict[str, Any]
    sample_size: int
    in_channels: int
    num_classes: int
    conditional: bool
    latents: str
    latents_fingerprint: str = ""
    selection: str | None = None
    selection_fingerprint: str | None = None
    vae: str | None = None
    scale_factor: float = 1.0
    image_size: int | None = None
    n_train: int = 0
    steps: int = 0
    steps_done: int = 0
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema: float = 0.9999
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    t_schedule: str = "uniform"
    seed: int = 0
    checkpoint_every: int = 1000
    world_size: int = 1
    prunekit_version: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise PrunekitError(f"{source} lacks the fields {', '.join(missing)}; is it a prunekit run?")
        return cls(**{k: v for k, v in data.items() if k in names})


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """The RunConfig of ``run_dir``, or a PrunekitError saying what is missing."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise PrunekitError(f"run directory not found: {run_dir}. Train one with `prunekit lfm train`.")
    if not path.is_file():
        raise PrunekitError(f"{run_dir} has no {CONFIG}; it is not a prunekit training run.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PrunekitError(f"{path} is not valid JSON: {exc}") from exc
    return RunConfig.from_dict(data, source=str(path))


def write_config(run_dir: str | os.PathLike, config: RunConfig) -> None:
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
    with atomic_path(path) as tmp:  # one metadata key: safetensors writes them in hash order
        save_file(tensors, str(tmp), metadata={"step": str(step)})


def weights_step(path: str | os.PathLike) -> int:
    """The step a weights file was saved at."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return int(meta.get("step", -1))


def load_weights(path: str | os.PathLike, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
    """Load a weights file into ``model``; every tensor must be present with its shape."""
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise PrunekitError(f"cannot read weights file {path}: {exc}") from exc
    kept, _ = _unique_state(model)
    missing = [k for k in kept if k not in state]
    unexpected = [k for k in state if k not in kept]
    wrong = [k for k in kept if k in state and state[k].shape != kept[k].shape]
    if missing or unexpected or wrong:
        raise PrunekitError(
            f"weights file {path} does not fit the run's model (missing: {missing[:3]}, "
            f"unexpected: {unexpected[:3]}, other shapes: {wrong[:3]}). Was config.json edited?"
        )
    model.load_state_dict(state, strict=False)


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Optimizer state, step and RNG states (torch.save), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PrunekitError(f"cannot read training state {path}: {exc}") from exc


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
    """The training state of the last complete checkpoint in ``run_dir``; None when there is none.

    Raises when some checkpoint files are missing or the files disagree on the step (the
    last write was interrupted between two renames).
    """
    d = Path(run_dir)
    files = [d / MODEL, d / EMA, d / STATE]
    if not any(f.exists() for f in files):
        return None
    absent = [f.name for f in files if not f.exists()]
    if absent:
        raise PrunekitError(f"run {run_dir} has an incomplete checkpoint (missing {', '.join(absent)}).")
    state = load_state(d / STATE)
    steps = {weights_step(d / MODEL), weights_step(d / EMA), int(state["step"])}
    if len(steps) != 1:
        raise PrunekitError(
            f"run {run_dir}: checkpoint files disagree on the step ({sorted(steps)}); "
            "the last write was interrupted. Resume from a copy of an earlier checkpoint."
        )
    return state


def load_run(
    run_dir: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[VelocityModel, RunConfig]:
    """The trained model of ``run_dir`` (EMA weights by default) in eval mode, and its config.

    The model maps (x, t, y) -> velocity with t = 0 noise, t = 1 data.
    """
    config = read_config(run_dir)
    d = Path(run_dir)
    weights = d / (EMA if ema else MODEL)
    if not weights.is_file():
        raise PrunekitError(
            f"run {run_dir} has no {weights.name} yet (steps_done={config.steps_done}); "
            "train it (it writes a checkpoint every --checkpoint-every steps and at the end)."
        )
    try:
        model = model_from_config(config.model, device="cpu")
    except PrunekitError as exc:
        raise PrunekitError(f"{d / CONFIG}: {exc}") from exc
    load_weights(weights, model)
    return model.to(device).eval(), config


def check_same_latents(a: RunConfig, b: RunConfig, path_a: str | os.PathLike, path_b: str | os.PathLike) -> None:
    """Coarse run ``a`` and fine run ``b`` must live in one latent space (same VAE and scale)."""
    va = str(Path(a.vae).resolve()) if a.vae else None
    vb = str(Path(b.vae).resolve()) if b.vae else None
    if va != vb or not math.isclose(a.scale_factor, b.scale_factor, rel_tol=1e-6):
        raise PrunekitError(
            f"--coarse {path_a} was trained on latents of VAE {a.vae} (scale {a.scale_factor}) but "
            f"--fine {path_b} on VAE {b.vae} (scale {b.scale_factor}); coarse-to-fine needs one "
            "latent space. Train both on latents from the same VAE."
        )
