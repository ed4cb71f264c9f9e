"""``prunekit inspect --html``: a self-contained page that shows what a selection keeps.

:func:`inspect_report` (``pk.inspect_report``) builds an :class:`InspectReport` from a
selection and, optionally, its scores, embeddings and images; ``report.render_html(DIR)``
writes ``DIR/index.html``. Modules: ``build`` (the report object), ``data`` (numbers streamed
from the scores), ``views`` (map, duplicate groups, comparisons), ``thumbs`` (images),
``figures`` (matplotlib), ``page`` (HTML).
"""

from prunekit.report.build import InspectReport, build

inspect_report = build

__all__ = ["InspectReport", "build", "inspect_report"]
