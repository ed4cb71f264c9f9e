"""Exporting a selection for other frameworks: .npy, .json or .txt."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path, is_stdout, write_bytes, write_text
from prunekit.io.provenance import jsonable
from prunekit.runtime.memory import check_fits

if TYPE_CHECKING:
    from prunekit.selection.subset import Selection

FORMATS = ("npy", "json", "txt")
TEXT_FORMATS = ("json", "txt")  # the formats that may go to standard output
# Characters that would split or blur one id per line: control characters (C0, DEL, C1,
# where str.splitlines also breaks) and the Unicode line and paragraph separators.
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
        if use_ids and sel.ids.dtype == object:
            _check_one_per_line(sel.ids)
        return "".join(f"{v}\n" for v in values.tolist()).encode()
    if values.dtype == object:
        values = values.astype(str)  # .npy without pickles
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


def _check_one_per_line(ids: np.ndarray, start: int = 0) -> None:
    """String ids that a one-per-line file would not give back (an empty id, a line break
    or another control character inside one) are refused (``start``: the first one's number)."""
    for i, v in enumerate(ids.tolist(), start):
        if not v or _UNSAFE_IN_LINE.search(v):
            what = "is empty" if not v else "contains a line break or control character"
            raise PrunekitError(
                f"id number {i} ({v!r:.60}) {what}, so a txt file of one id per line cannot hold "
                "it; export --format json or npy instead."
            )


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


# -- a selection folder, streamed ----------------------------------------------------------


def export_folder(
    folder: str | os.PathLike, path: str | os.PathLike, fmt: str | None = None, *,
    use_ids: bool = False,
) -> Path:
    """Write the selection folder ``folder`` to ``path`` as :func:`export_selection` writes
    the loaded selection, byte for byte, without loading it: the file is written batch by
    batch into a temporary file renamed into place (``-``: standard output, json/txt only),
    holding one batch of rows at a time (npy reads the folder twice: its header needs the
    length, and the width of string ids).
    """
    from prunekit.io.dataset import PartsReader

    fmt = format_of(path, fmt)
    if fmt not in FORMATS:
        raise PrunekitError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}.")
    if is_stdout(path) and fmt not in TEXT_FORMATS:
        raise PrunekitError(f"{fmt} is binary; write it to a file, not to standard output.")
    from prunekit.selection.streamed import selection_meta

    r = PartsReader(folder, kind="selection")
    meta = selection_meta(r, folder)
    if use_ids and fmt != "json" and "id" not in r.columns:
        raise PrunekitError("the selection has no ids (its source had none); export indices instead.")
    if fmt == "json":
        chunks = _json_chunks(r, meta)
    elif fmt == "txt":
        if use_ids and r.columns["id"] == "string" and is_stdout(path):
            _check_lines(r)  # before the first line is printed
        chunks = _txt_chunks(r, use_ids)
    else:
        chunks = _npy_chunks(r, use_ids)
    _write_chunks(path, chunks)
    return Path(str(path))


def _values(r, column: str) -> Iterator[np.ndarray]:
    """One column of the kept rows, batch by batch (``position`` for the indices)."""
    for b in r.iter_batches([] if column == "position" else [column]):
        yield b[column]


def _draws(r, use_ids: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(values, values repeated by count)`` batch by batch: one entry per training draw."""
    col = "id" if use_ids else "position"
    counted = "count" in r.columns
    for b in r.iter_batches([col, "count"] if counted else [col]):
        v = b[col]
        if not counted:
            yield v, v
            continue
        if np.any(b["count"] < 1):
            raise PrunekitError(f"{r.path}: selection counts must be positive, one per index.")
        yield v, np.repeat(v, b["count"])


def _check_lines(r) -> None:
    at = 0
    for ids in _values(r, "id"):
        _check_one_per_line(ids, at)
        at += ids.size


def _txt_chunks(r, use_ids: bool) -> Iterator[bytes]:
    at = 0
    check = use_ids and r.columns["id"] == "string"
    for kept, drawn in _draws(r, use_ids):
        if check:
            _check_one_per_line(kept, at)
            at += kept.size
        yield "".join(f"{v}\n" for v in drawn.tolist()).encode()


def _npy_chunks(r, use_ids: bool) -> Iterator[bytes]:
    """The header (its length and dtype from a first pass when needed), then the rows."""
    string = use_ids and r.columns["id"] == "string"
    n, width = r.n_rows, 1
    if string or "count" in r.columns:
        n = 0
        for kept, drawn in _draws(r, use_ids):
            n += drawn.size
            if string and kept.size:
                width = max(width, max(len(v) for v in kept.tolist()))
    dtype = np.dtype(f"<U{width}") if string else np.dtype(np.int64)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
               "shape": (n,)})
    yield head.getvalue()
    for _, drawn in _draws(r, use_ids):
        yield np.ascontiguousarray(drawn.astype(dtype)).tobytes()


_HOLE = "\x00prunekit {}\x00"  # a string no selection holds: where a streamed list goes


def _json_chunks(r, meta: Selection) -> Iterator[bytes]:
    """The JSON document of :func:`export_payload`, its three lists streamed in place."""
    lists = {"indices": "position", "counts": "count", "ids": "id"}
    doc = {k: (_HOLE.format(k) if c in r.columns else None) for k, c in lists.items()}
    doc.update({"n_total": meta.n_total, "n_kept": r.n_rows, "pr": meta.pr, "method": meta.method,
                "seed": meta.seed, "source_fingerprint": meta.source_fingerprint,
                "params": meta.params})
    text = json.dumps(jsonable(doc), indent=1) + "\n"
    for key, col in lists.items():
        if col not in r.columns:
            continue
        before, text = text.split(json.dumps(_HOLE.format(key)), 1)
        yield before.encode()
        yield from _json_list(_values(r, col))
    yield text.encode()


def _json_list(batches: Iterable[np.ndarray]) -> Iterator[bytes]:
    """A list as ``json.dumps(..., indent=1)`` writes it as the value of a top-level key."""
    first = True
    for v in batches:
        if not v.size:
            continue
        items = ",\n  ".join(map(json.dumps, v.tolist()))
        yield (("[\n  " if first else ",\n  ") + items).encode()
        first = False
    yield b"[]" if first else b"\n ]"


def _write_chunks(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Standard output as the chunks come, or a temporary file renamed when complete."""
    if is_stdout(path):
        for c in chunks:
            sys.stdout.write(c.decode())
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
