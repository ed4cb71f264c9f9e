"""Exporting a selection for other frameworks: .npy, .json or .txt."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import is_stdout, write_bytes, write_text
from prunekit.io.provenance import jsonable
from prunekit.runtime.memory import check_fits

if TYPE_CHECKING:
    from prunekit.selection.subset import Selection

FORMATS = ("npy", "json", "txt")
TEXT_FORMATS = ("json", "txt")  # the formats that may go to standard output


def export_payload(sel: Selection, fmt: str, use_ids: bool = False) -> bytes:
    """The bytes of an export file.

    npy / txt: one entry per training draw, ascending — the row positions (or ids with
    ``use_ids``), each repeated ``counts`` times when the selection oversamples. json: an
    object with ``indices``, ``counts`` (null without oversampling), ``ids`` (null when
    the source had none), ``n_total``, ``n_kept``, ``pr``, ``method``, ``seed``,
    ``source_fingerprint`` and ``params``.
    """
    if fmt not in FORMATS:
        raise PrunekitError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}.")
    draws = int(sel.counts.sum()) if sel.counts is not None else sel.n_kept
    # text of up to ~24 bytes per entry, built next to the Python list it comes from
    check_fits(64.0 * draws, f"the {fmt} export of {draws} rows")
    if fmt == "json":
        doc = {
            "indices": sel.indices,
            "counts": sel.counts,
            "ids": sel.ids,
            "n_total": sel.n_total,
            "n_kept": sel.n_kept,
            "pr": sel.pr,
            "method": sel.method,
            "seed": sel.seed,
            "source_fingerprint": sel.source_fingerprint,
            "params": sel.params,
        }
        return (json.dumps(jsonable(doc), indent=1) + "\n").encode()
    if use_ids:
        if sel.ids is None:
            raise PrunekitError("the selection has no ids (its source had none); export indices instead.")
        values = sel.ids if sel.counts is None else np.repeat(sel.ids, sel.counts)
    else:
        values = sel.repeated_indices()
    if fmt == "txt":
        return "".join(f"{v}\n" for v in values.tolist()).encode()
    if values.dtype == object:
        values = values.astype(str)  # .npy without pickles
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


def format_of(path: str | os.PathLike, fmt: str | None) -> str:
    """``fmt``, or the format named by the suffix of ``path``."""
    if fmt is not None:
        return fmt
    suffix = Path(str(path)).suffix.lstrip(".")
    if suffix not in FORMATS:
        raise PrunekitError(
            f"cannot tell the export format of '{path}' from its suffix; name a format ({', '.join(FORMATS)})."
        )
    return suffix


def export_selection(
    sel: Selection, path: str | os.PathLike, fmt: str | None = None, *, use_ids: bool = False
) -> Path:
    """Write ``sel`` to ``path`` atomically (``-``: standard output, json/txt only)."""
    fmt = format_of(path, fmt)
    payload = export_payload(sel, fmt, use_ids)
    if is_stdout(path):
        if fmt not in TEXT_FORMATS:
            raise PrunekitError(f"{fmt} is binary; write it to a file, not to standard output.")
        write_text(path, payload.decode())
    else:
        write_bytes(path, payload)
    return Path(str(path))
