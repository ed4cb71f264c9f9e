"""Choosing the torch device a command runs on, with one clear error for a bad name.

Importable without torch (the CLI's ``--device`` help text comes from here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunekit.errors import PrunekitError

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
        raise PrunekitError(f"--device '{device}' is not a device name; use {DEVICE_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError(f"--device {device}: CUDA is not available here. Use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PrunekitError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise PrunekitError(f"--device {device}: MPS is not available here. Use --device cpu.")
    elif dev.type != "cpu":
        raise PrunekitError(f"--device '{device}' is not supported; use {DEVICE_HELP}")
    return dev
