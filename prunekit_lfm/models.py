"""Backbones for latent flow matching: DiT and UNet presets behind one velocity face.

Every model is a :class:`VelocityModel`: ``model(x, t, y) -> v`` with x the latent
[B, C, H, W], t in [0, 1] (t = 0 noise, t = 1 data; x_t = (1 - t) x0 + t x1) and v the
predicted velocity x1 - x0, the same shape as x.

Backbones are diffusers' ``DiTTransformer2DModel`` and ``UNet2DModel``, always built from
a config (never downloaded). A model spec is one of

* a preset name from :data:`PRESETS` (``"DiT-S/2"``, ``"tiny"``, ``"unet"``, ...),
* a dict ``{"backbone": "dit" | "unet", <diffusers config keys>}``, optionally with
  ``"preset": NAME`` to start from a preset and override some keys,
* the path of a JSON file holding such a dict,
* the dict returned by :meth:`VelocityModel.config_dict` (rebuild with
  :func:`model_from_config`).

The data decides ``sample_size``, ``in_channels`` (= ``out_channels``, no learned sigma)
and the number of class embeddings, so a spec must not set them to other values.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

#: Our t in [0, 1] is fed to the backbone's sinusoidal timestep embedding as t * TIME_SCALE,
#: the range (0..1000) those embeddings were designed for.
TIME_SCALE = 1000.0


def _dit(depth: int, width: int, heads: int, patch: int = 2) -> dict[str, Any]:
    if width % heads:
        raise ValueError("width must be divisible by heads")
    return {
        "backbone": "dit",
        "num_layers": depth,
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "patch_size": patch,
    }


def _unet(channels: list[int], layers: int, attention: list[bool], groups: int) -> dict[str, Any]:
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    return {
        "backbone": "unet",
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": groups,
        "attention_head_dim": 32,
    }


#: Named specs. DiT sizes are the DiT paper's (depth / width / heads, patch 2):
#: S 12/384/6, B 12/768/12, L 24/1024/16, XL 28/1152/16. ``tiny`` (~0.4M params) and
#: ``small`` (~5M, about 14x the FLOPs of ``tiny``) run on a CPU in tests and demos.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _dit(2, 96, 2),
    "small": _dit(4, 256, 4),
    "DiT-S/2": _dit(12, 384, 6),
    "DiT-B/2": _dit(12, 768, 12),
    "DiT-L/2": _dit(24, 1024, 16),
    "DiT-XL/2": _dit(28, 1152, 16),
    "unet-tiny": _unet([32, 64], 1, [False, True], 8),
    "unet": _unet([128, 256, 256], 2, [False, True, True], 32),
}

def resolve_spec(spec: str | os.PathLike | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A spec (preset name, dict or JSON path) -> (canonical dict, preset name or None)."""
    preset: str | None = None
    if isinstance(spec, (str, os.PathLike)) and str(spec) in PRESETS:
        preset = str(spec)
        return copy.deepcopy(PRESETS[preset]), preset
    if isinstance(spec, (str, os.PathLike)):
        spec = _read_spec_file(Path(spec))
    if not isinstance(spec, dict):
        raise PrunekitError(f"model spec must be a preset name, a dict or a JSON file; got {spec!r}.")
    spec = copy.deepcopy(spec)
    if "spec" in spec and isinstance(spec["spec"], dict):  # a config_dict(): its spec and preset
        canon, _ = resolve_spec(spec["spec"])
        return canon, spec.get("preset")
    if "preset" in spec:
        preset = spec.pop("preset")
        if preset not in PRESETS:
            raise PrunekitError(f"unknown model preset '{preset}'. Known: {', '.join(PRESETS)}.")
        spec = {**copy.deepcopy(PRESETS[preset]), **spec}
    if spec.get("backbone") not in ("dit", "unet"):
        raise PrunekitError(
            f"model spec needs \"backbone\": \"dit\" or \"unet\" (got {spec.get('backbone')!r}); "
            f"or name a preset: {', '.join(PRESETS)}."
        )
    _check_sizes(spec)
    return spec, preset


#: Keys that count layers, heads or channels: each must be a positive integer (or a list of them).
_SIZE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size",
              "layers_per_block", "block_out_channels", "norm_num_groups")


def _check_sizes(spec: dict[str, Any]) -> None:
    for key in _SIZE_KEYS:
        if key not in spec:
            continue
        values = spec[key] if isinstance(spec[key], list) else [spec[key]]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16
                                 for v in values):
            raise PrunekitError(
                f"model spec {key}={spec[key]!r}: give a positive integer"
                f"{' per block' if isinstance(spec[key], list) else ''} (at most 65536)."
            )


def _read_spec_file(path: Path) -> dict[str, Any]:
    if path.suffix.lower() != ".json" and not path.exists():
        raise PrunekitError(
            f"unknown model '{path}': not a preset ({', '.join(PRESETS)}) nor a JSON config file."
        )
    if not path.is_file():
        raise PrunekitError(f"model config file not found: {path}. Give a preset name or a JSON file.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrunekitError(f"model config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PrunekitError(f"model config file {path} must hold a JSON object.")
    return data


class VelocityModel(nn.Module):
    """A backbone predicting the flow-matching velocity: ``forward(x, t, y) -> v``.

    Time convention: t = 0 is noise, t = 1 is data; x_t = (1 - t) x0 + t x1 and the target
    velocity is x1 - x0. The backbone receives ``timestep = t * TIME_SCALE`` (t * 1000).

    Class labels ``y`` are ids in [0, num_classes); the id ``num_classes`` (:attr:`null_label`)
    is the "no label" used by unconditional models and by classifier-free guidance. diffusers'
    own random label dropout is switched off: label dropout happens in the trainer, seeded.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        spec: dict[str, Any],
        preset: str | None,
        sample_size: int,
        in_channels: int,
        num_classes: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.net = net
        self.backbone: str = spec["backbone"]
        self.spec = spec
        self.preset = preset
        self.sample_size = sample_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.seed = seed

    @property
    def null_label(self) -> int:
        """The label id meaning "unconditional" (= num_classes)."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at (x, t): x [B, C, H, W]; t [B] or scalar in [0, 1] (0 noise, 1 data);
        y long [B] or None (None = the null label for every item)."""
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t.reshape(b)
        timestep = t * TIME_SCALE
        if y is None:
            y = torch.full((b,), self.null_label, dtype=torch.long, device=x.device)
        if self.backbone == "dit":
            return self.net(x, timestep=timestep, class_labels=y, return_dict=False)[0]
        labels = y if self.net.class_embedding is not None else None
        return self.net(x, timestep, class_labels=labels, return_dict=False)[0]

    def config_dict(self) -> dict[str, Any]:
        """JSON-ready description; :func:`model_from_config` rebuilds the same architecture."""
        return {
            "spec": copy.deepcopy(self.spec),
            "preset": self.preset,
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "seed": self.seed,
        }

    def num_params(self) -> int:
        """Number of distinct parameters (shared embeddings counted once)."""
        return sum(p.numel() for p in self.parameters())


def build_model(
    spec: str | os.PathLike | dict[str, Any],
    *,
    sample_size: int,
    in_channels: int,
    num_classes: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> VelocityModel:
    """Build a fresh, seeded :class:`VelocityModel` for latents [in_channels, sample_size, sample_size].

    ``num_classes`` = 0 builds an unconditional model (only the null label exists). The
    global torch RNG is left untouched: initialisation draws from its own seeded stream.
    ``device="meta"`` builds without allocating (to count parameters of big presets).
    """
    canon, preset = resolve_spec(spec)
    kwargs = {k: v for k, v in canon.items() if k != "backbone"}
    if sample_size < 1 or in_channels < 1 or num_classes < 0:
        raise PrunekitError(
            f"bad latent shape for the model: sample_size={sample_size}, in_channels={in_channels}, "
            f"num_classes={num_classes}."
        )
    data = {"sample_size": sample_size, "in_channels": in_channels, "out_channels": in_channels}
    if canon["backbone"] == "dit":
        data["num_embeds_ada_norm"] = num_classes
        patch = kwargs.get("patch_size", 2)
        if sample_size % patch:
            raise PrunekitError(f"latent size {sample_size} is not divisible by the DiT patch size {patch}.")
    else:
        data["num_class_embeds"] = num_classes + 1 if num_classes else None
    for key, value in data.items():
        if key in kwargs and kwargs[key] != value:
            raise PrunekitError(
                f"model spec sets {key}={kwargs[key]} but the data needs {value}; remove it from the spec."
            )
    kwargs.update(data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with torch.device(device or "cpu"):
                net = _make_net(canon["backbone"], kwargs)
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError, AttributeError) as exc:
            raise PrunekitError(f"invalid model spec {canon}: {exc}") from exc
    return VelocityModel(
        net, spec=canon, preset=preset, sample_size=sample_size,
        in_channels=in_channels, num_classes=num_classes, seed=seed,
    )


def model_from_config(config: dict[str, Any], *, device: str | torch.device | None = None) -> VelocityModel:
    """Rebuild the architecture recorded by :meth:`VelocityModel.config_dict` (fresh weights)."""
    return build_model(
        config, sample_size=int(config["sample_size"]), in_channels=int(config["in_channels"]),
        num_classes=int(config["num_classes"]), seed=int(config.get("seed", 0)), device=device,
    )


def _make_net(backbone: str, kwargs: dict[str, Any]) -> nn.Module:
    from diffusers import DiTTransformer2DModel, UNet2DModel

    if backbone == "unet":
        return UNet2DModel(**kwargs)
    net = DiTTransformer2DModel(**kwargs)
    check_dit_internals(net)
    _share_dit_embedder(net)
    _dit_init(net)
    return net


#: The diffusers releases [first, last) whose DiT internals :func:`_share_dit_embedder` and
#: :func:`_dit_init` were tested against (pyproject pins the same range).
DIFFUSERS_TESTED = ("0.30", "0.43")

#: The attributes of a diffusers ``DiTTransformer2DModel`` that the tying and the
#: initialisation reach into (relative to the net, ``*`` = every transformer block).
DIT_INTERNALS = (
    "pos_embed.proj", "proj_out_1", "proj_out_2",
    "*.norm1.linear", "*.norm1.emb.class_embedder.embedding_table",
    "*.norm1.emb.class_embedder.dropout_prob", "*.norm1.emb.timestep_embedder.linear_1",
    "*.norm1.emb.timestep_embedder.linear_2",
)


def check_dit_internals(net: nn.Module) -> None:
    """Fail loudly (naming the diffusers version) when a release moved what we tie and initialise."""
    import diffusers

    blocks = getattr(net, "transformer_blocks", None)
    missing = [] if blocks else ["transformer_blocks"]
    for path in DIT_INTERNALS:
        owners = list(blocks or []) if path.startswith("*.") else [net]
        for owner in owners:
            obj = owner
            for part in path.removeprefix("*.").split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    missing.append(path)
                    break
            if missing and missing[-1] == path:
                break
    if missing:
        lo, hi = DIFFUSERS_TESTED
        raise PrunekitError(
            f"diffusers {diffusers.__version__} changed the DiT internals prunekit ties and "
            f"initialises (missing: {', '.join(missing)}); install a tested release: "
            f'pip install "diffusers>={lo},<{hi}".'
        )


def _share_dit_embedder(net: nn.Module) -> None:
    """One timestep/label embedder for all blocks, as in the DiT paper.

    diffusers keeps a separate copy per block (its checkpoints were converted that way);
    sharing matches the paper's parameter counts. The blocks keep their own embedder
    modules and are tied by their parameters (each block's embedder holds block 0's
    Parameter objects), not by putting one module in every block: torch.func's
    ``functional_call`` restores tied parameters correctly, but a module reachable under
    several names comes back holding the substituted tensors instead of its Parameters.
    It also turns off diffusers' built-in 10 % label dropout, which would draw from the
    global RNG in train mode.
    """
    blocks = net.transformer_blocks
    shared = blocks[0].norm1.emb
    for block in blocks:
        emb = block.norm1.emb
        emb.class_embedder.dropout_prob = 0.0
        if emb is shared:
            continue
        for owner_name, owner in shared.named_modules():
            twin = emb.get_submodule(owner_name)
            for name, param in owner.named_parameters(recurse=False):
                setattr(twin, name, param)


def _dit_init(net: nn.Module) -> None:
    """The DiT paper's initialisation: xavier linears, N(0, 0.02) embeddings, adaLN-Zero."""
    seen: set[int] = set()  # the tied embedder's weights are drawn once, not once per block
    for module in net.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    proj = net.pos_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    emb = net.transformer_blocks[0].norm1.emb
    nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
    nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
    for block in net.transformer_blocks:
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (net.proj_out_1, net.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)

