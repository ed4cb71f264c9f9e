"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import click

from ..embeddings import DEFAULT_KEY, Embeddings, load_embeddings

quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars (they are also off when stderr is not a terminal)."
)
key_option = click.option(
    "--key", default=DEFAULT_KEY, show_default=True, help="Dataset (HDF5) or array (npz) holding the embeddings."
)
drop_option = click.option(
    "--drop-nonfinite",
    is_flag=True,
    help="Skip rows with NaN/inf instead of failing; selections still index the original rows.",
)


def open_embeddings(path: str, key: str, drop_nonfinite: bool) -> Embeddings:
    return load_embeddings(path, key=key, drop_nonfinite=drop_nonfinite)
