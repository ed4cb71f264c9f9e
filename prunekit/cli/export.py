"""``prunekit export``: a selection as .npy / .json / .txt for other frameworks."""

from __future__ import annotations

import os
from pathlib import Path

import click

from prunekit.cli.common import check_output
from prunekit.errors import PrunekitError
from prunekit.io.atomic import is_stdout
from prunekit.selection.export import FORMATS, TEXT_FORMATS, export_folder, export_selection
from prunekit.selection.subset import load_selection


@click.command()
@click.argument("selection", type=click.Path(dir_okay=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="npy: int64 array; txt: one per line; json: indices, counts, ids and metadata.")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write (atomic); '-' prints json/txt. Default: SELECTION with the format's suffix.")
@click.option("--ids", "use_ids", is_flag=True,
              help="npy/txt: write the rows' ids instead of their positions.")
def export(selection: str, fmt: str, output: str | None, use_ids: bool) -> None:
    """Write SELECTION's rows for other frameworks.

    npy and txt hold one entry per training draw (rows repeated by 'counts' when the
    selection oversamples), so they can feed e.g. a torch Subset directly. A selection
    folder gives the same file.
    """
    out = output if output else str(Path(selection).with_suffix("." + fmt))
    check_output(out, inputs=[selection], what="--output", allow_stdout=fmt in TEXT_FORMATS)
    folder = os.path.isdir(selection)  # streamed part by part, never loaded whole
    if folder:
        from prunekit.io.dataset import PartsReader

        n_kept = PartsReader(selection, kind="selection").n_rows
    else:
        sel = load_selection(selection)
        n_kept = sel.n_kept
    try:  # what the selection cannot give in this format, named with its file
        if folder:
            path = export_folder(selection, out, fmt, use_ids=use_ids)
        else:
            path = export_selection(sel, out, fmt, use_ids=use_ids)
    except PrunekitError as exc:
        raise PrunekitError(f"{selection}: {exc}") from exc
    if output is None or not is_stdout(output):
        click.echo(f"{path}: {n_kept} rows ({fmt})")
