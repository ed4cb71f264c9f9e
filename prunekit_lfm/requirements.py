"""The plug-in's third-party dependencies, checked before a command starts.

Importable without them: ``prunekit lfm ...`` and ``prunekit demo`` call
:func:`require_plugin` first, so a missing torch is one clear error (exit 2) saying how
to install the plug-in, not a traceback in the middle of a command.
"""

from __future__ import annotations

import importlib

from prunekit.errors import PrunekitError

#: import name -> what pip installs it as
PACKAGES = {"torch": "torch", "diffusers": "diffusers", "safetensors": "safetensors", "PIL": "pillow"}
INSTALL = 'pip install "prunekit[lfm]"'


def missing() -> list[str]:
    """The pip names of the plug-in's dependencies that cannot be imported here."""
    absent = []
    for module, package in PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(package)
    return absent


def require_plugin(command: str) -> None:
    """Raise a PrunekitError naming the missing packages and the install command."""
    absent = missing()
    if absent:
        raise PrunekitError(
            f"'prunekit {command}' needs the lfm plug-in's dependencies, but {', '.join(absent)} "
            f"cannot be imported. Install them with: {INSTALL}"
        )
