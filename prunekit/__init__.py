"""prunekit: which part of your data can you drop, and what does that do to your model?

The core is framework-agnostic (numpy, scipy, scikit-learn, faiss, h5py); it never
imports torch. The Python API mirrors the CLI::

    import prunekit as pk
    emb = pk.load_embeddings("embeddings.h5")
    scores = pk.score(emb, "kmeans", k=24, seed=0)
    sel = pk.select(scores, pr=0.8, balance="clusters")
    sel.save("selection.h5")
"""

from ._version import __version__
from .dedup import select_eps  # noqa: E402
from .embeddings import Embeddings, load_embeddings  # noqa: E402
from .errors import PrunekitError  # noqa: E402
from .flow.study import stability  # noqa: E402
from .inspection import inspect  # noqa: E402
from .methods import available as available_methods  # noqa: E402
from .methods import score  # noqa: E402
from .scores import Scores, load_scores  # noqa: E402
from .selection import Selection, load_selection, resolve_rows, select  # noqa: E402
from .summary import describe  # noqa: E402

__all__ = [
    "Embeddings",
    "PrunekitError",
    "Scores",
    "Selection",
    "__version__",
    "available_methods",
    "describe",
    "inspect",
    "load_embeddings",
    "load_scores",
    "load_selection",
    "resolve_rows",
    "score",
    "select",
    "select_eps",
    "stability",
]
