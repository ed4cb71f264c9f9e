"""prunekit: which part of your data can you drop, and what does that do to your model?

The core is framework-agnostic (numpy, scipy, scikit-learn, faiss, h5py); it never
imports torch. The Python API mirrors the CLI::

    import prunekit as pk
    emb = pk.load_embeddings("embeddings.h5")
    scores = pk.score(emb, "kmeans", k=24, seed=0)
    sel = pk.select(scores, pr=0.8, balance="clusters")
    sel.save("selection.h5")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prunekit import _compat
from prunekit._version import __version__
from prunekit.errors import PrunekitError

# Eager, unlike the names below: importing any prunekit.runtime.* module binds the
# subpackage to ``prunekit.runtime``, which must stay this function.
from prunekit.runtime.context import RunContext, get_runtime, runtime  # noqa: E402

_compat.install()

# The public names load on first use (PEP 562), so ``import prunekit`` -- and with it the
# CLI's start-up, where a Ctrl-C must already exit cleanly -- stays light.
_LAZY: dict[str, tuple[str, str]] = {
    "stability": ("prunekit.flow.study", "stability"),
    "Embeddings": ("prunekit.io.embeddings", "Embeddings"),
    "load_embeddings": ("prunekit.io.embeddings", "load_embeddings"),
    "describe": ("prunekit.io.summary", "describe"),
    "available_methods": ("prunekit.methods", "available"),
    "score": ("prunekit.methods", "score"),
    "select_eps": ("prunekit.methods.dedup", "select_eps"),
    "inspect_report": ("prunekit.report", "inspect_report"),
    "inspect": ("prunekit.selection.inspection", "inspect"),
    "Scores": ("prunekit.selection.scores", "Scores"),
    "load_scores": ("prunekit.selection.scores", "load_scores"),
    "Selection": ("prunekit.selection.subset", "Selection"),
    "load_selection": ("prunekit.selection.subset", "load_selection"),
    "resolve_rows": ("prunekit.selection.subset", "resolve_rows"),
    "select": ("prunekit.selection.subset", "select"),
}

if TYPE_CHECKING:  # what the names are, for readers and type checkers
    from prunekit.flow.study import stability
    from prunekit.io.embeddings import Embeddings, load_embeddings
    from prunekit.io.summary import describe
    from prunekit.methods import available as available_methods
    from prunekit.methods import score
    from prunekit.methods.dedup import select_eps
    from prunekit.report import inspect_report
    from prunekit.selection.inspection import inspect
    from prunekit.selection.scores import Scores, load_scores
    from prunekit.selection.subset import Selection, load_selection, resolve_rows, select


def __getattr__(name: str) -> Any:
    """A public name (imported on first use), or a submodule such as ``pk.seeds``."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'prunekit' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Embeddings",
    "PrunekitError",
    "RunContext",
    "Scores",
    "Selection",
    "__version__",
    "available_methods",
    "describe",
    "get_runtime",
    "inspect",
    "inspect_report",
    "load_embeddings",
    "load_scores",
    "load_selection",
    "resolve_rows",
    "runtime",
    "score",
    "select",
    "select_eps",
    "stability",
]
