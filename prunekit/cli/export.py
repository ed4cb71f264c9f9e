"""``prunekit export``: a selection as .npy / .json / .txt for other frameworks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np

from ..atomic import write_bytes
from ..errors import PrunekitError
from ..selection import Selection, load_selection

FORMATS = ("npy", "json", "txt")


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
    if fmt == "json":
        doc = {
            "indices": sel.indices.tolist(),
            "counts": None if sel.counts is None else sel.counts.tolist(),
            "ids": None if sel.ids is None else sel.ids.tolist(),
            "n_total": sel.n_total,
            "n_kept": sel.n_kept,
            "pr": sel.pr,
            "method": sel.method,
            "seed": sel.seed,
            "source_fingerprint": sel.source_fingerprint,
            "params": sel.params,
        }
        return (json.dumps(doc, indent=1) + "\n").encode()
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


@click.command()
@click.argument("selection", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="npy: int64 array; txt: one per line; json: indices, counts, ids and metadata.")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="File to write (atomic). Default: SELECTION with the format's suffix.")
@click.option("--ids", "use_ids", is_flag=True,
              help="npy/txt: write the rows' ids instead of their positions.")
def export(selection: str, fmt: str, output: str | None, use_ids: bool) -> None:
    """Write SELECTION's rows for other frameworks.

    npy and txt hold one entry per training draw (rows repeated by 'counts' when the
    selection oversamples), so they can feed e.g. a torch Subset directly.
    """
    sel = load_selection(selection)
    payload = export_payload(sel, fmt, use_ids)
    out = Path(output) if output else Path(selection).with_suffix("." + fmt)
    if out.resolve() == Path(selection).resolve():
        raise PrunekitError(f"the export would overwrite the selection file {selection}; pass -o.")
    write_bytes(out, payload)
    click.echo(f"{out}: {sel.n_kept} rows ({fmt})")
