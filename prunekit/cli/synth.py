"""``prunekit synth``: synthetic embedding sets."""

from __future__ import annotations

import click

from prunekit.cli.common import check_output, seed_option
from prunekit.flow.synthetic import gaussian_mixture

POSITIVE = click.IntRange(min=1)


@click.group()
def synth() -> None:
    """Write synthetic embedding sets (for trying the pipeline and the stability analysis)."""


@synth.command("gmm")
@click.option("--n", "n", type=POSITIVE, required=True, help="Number of points.")
@click.option("--dim", type=POSITIVE, required=True, help="Dimension.")
@click.option("--components", type=POSITIVE, required=True, help="Number of Gaussian components.")
@click.option("--spread", type=float, default=0.5, show_default=True,
              help="Standard deviation of the points around their component mean (means ~ N(0, I)).")
@seed_option("Seed of the means, the shuffle and the noise (each its own stream).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Embeddings file (.h5) to write.")
def gmm(n: int, dim: int, components: int, spread: float, seed: int, output: str) -> None:
    """A Gaussian mixture: dataset `embeddings` (float32) and the component as `labels`.

    Component means are N(0, I) and points are mean + SPREAD * N(0, I), so coordinates have
    the scale of the flow's N(0, I) noise in every dimension.
    """
    check_output(output, what="--output")
    g = gaussian_mixture(n, dim, components, spread=spread, seed=seed)
    g.save(output)
    click.echo(f"wrote {output}: {n} x {dim} float32, {components} components (labels)")
