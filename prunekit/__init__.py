"""prunekit: which part of your data can you drop, and what does that do to your model?

The core is framework-agnostic (numpy, scipy, scikit-learn, faiss, h5py); it never
imports torch. The Python API mirrors the CLI::

    import prunekit as pk
    emb = pk.load_embeddings("embeddings.h5")
    scores = pk.score(emb, "kmeans", k=24, seed=0)
    sel = pk.select(scores, pr=0.8, balance="clusters")
    sel.save("selection.h5")
"""

from prunekit import _compat
from prunekit._version import __version__
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.flow.study import stability  # noqa: E402
from prunekit.io.embeddings import Embeddings, load_embeddings  # noqa: E402
from prunekit.io.summary import describe  # noqa: E402
from prunekit.methods import available as available_methods  # noqa: E402
from prunekit.methods import score  # noqa: E402
from prunekit.methods.dedup import select_eps  # noqa: E402
from prunekit.report import inspect_report  # noqa: E402
from prunekit.runtime.context import RunContext, get_runtime, runtime  # noqa: E402
from prunekit.selection.inspection import inspect  # noqa: E402
from prunekit.selection.scores import Scores, load_scores  # noqa: E402
from prunekit.selection.subset import Selection, load_selection, resolve_rows, select  # noqa: E402

_compat.install()

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
