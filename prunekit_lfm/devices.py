"""Choosing the torch device a command runs on, with one clear error for a bad name.

Importable without torch (the CLI's ``--device`` help text comes from here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunekit.params import ParamError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."


def pick_device(device: str | None = "auto") -> torch.device:
    """``auto``/None -> cuda when available, else cpu; any other name is checked to exist here."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ParamError("{device} '{}' is not a device name; use {}", device, DEVICE_HELP) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParamError("{device:{}}: CUDA is not available here. Use {device:cpu}.", device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParamError("{device:{}}: this machine has {} CUDA device(s).", device,
                             torch.cuda.device_count())
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ParamError("{device:{}}: MPS is not available here. Use {device:cpu}.", device)
    elif dev.type != "cpu":
        raise ParamError("{device} '{}' is not supported; use {}", device, DEVICE_HELP)
    return dev
