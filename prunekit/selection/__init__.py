"""From scores to a kept subset and what it is worth: the scores and selection files,
quota arithmetic, ``select()``, method-free quality (MMD, coverage), ``pk.inspect`` and the
export of a selection to other formats.

``prunekit.selection`` was a module before it became this package; its public names stay
importable from here.
"""

from prunekit.selection.subset import (  # noqa: F401
    Selection,
    labels_for,
    load_selection,
    resolve_rows,
    select,
)
