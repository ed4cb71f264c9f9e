"""Old module paths of the flat core, kept importable for one release.

The core was grouped into subpackages (``io/``, ``runtime/``, ``compute/``,
``selection/``, ``methods/``). ``import prunekit.atomic`` still works: it warns once and
returns the module at its new home (the same module object, so patches apply to both).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

MOVED = {
    **{m: f"prunekit.io.{m}" for m in (
        "atomic", "h5io", "npzio", "provenance", "source", "scan", "ids", "embeddings",
        "summary")},
    **{m: f"prunekit.runtime.{m}" for m in (
        "engine", "budget", "memory", "progress", "resume", "probe", "plan")},
    **{m: f"prunekit.compute.{m}" for m in ("cluster", "kernels", "distances", "grouping")},
    **{m: f"prunekit.selection.{m}" for m in (
        "scores", "quotas", "quality", "inspection", "export")},
    "dedup": "prunekit.methods.dedup",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``prunekit.<old>`` and hands out the module at its new path."""

    def __init__(self):
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("prunekit.")
        if fullname.startswith("prunekit.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = MOVED[spec.name.removeprefix("prunekit.")]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release.",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the alias spec on the real module: give it back its own.
        module.__spec__ = self._specs[module.__name__]


def install() -> None:
    """Register the alias finder once."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
