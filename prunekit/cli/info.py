"""``prunekit info``: what is in an embeddings file or a set of shards (see prunekit.io.summary)."""

from __future__ import annotations

import json

import click

from prunekit.cli.common import key_option, open_embeddings
from prunekit.io.summary import describe, render


@click.command()
@click.argument("path", type=click.Path())
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(path: str, key: str, as_json: bool) -> None:
    """Shape, dtype, keys, norm summary and NaN/inf rows of an embeddings file.

    PATH may also be a directory or a glob of shards: then each shard is reported too.
    Non-finite rows are reported, not an error, here.
    """
    d = describe(open_embeddings(path, key, drop_nonfinite=True))
    click.echo(json.dumps(d, indent=2) if as_json else render(d))
