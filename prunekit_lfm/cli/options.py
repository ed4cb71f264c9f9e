"""Options shared by the ``prunekit lfm`` commands (parsing only; no torch here)."""

from __future__ import annotations

import click

from prunekit.cli.common import seed_option, split_values
from prunekit.errors import PrunekitError
from prunekit_lfm.devices import DEVICE_HELP

INT64_MAX = 2**63 - 1  # counts and indices become int64 arrays; a larger number is refused by click
POSITIVE = click.IntRange(1, INT64_MAX)
INDEX = click.IntRange(0, INT64_MAX)


def device_option(default: str = "auto"):
    return click.option("--device", default=default, show_default=True, help=DEVICE_HELP)


def with_options(options):
    """Apply a list of click options (first listed = first in --help)."""

    def deco(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return deco


def parse_ints(values: tuple[str, ...], what: str) -> list[int] | None:
    """Repeated options and comma lists ("1,2" "3") -> [1, 2, 3]; None when empty."""
    return split_values(values, int, what) or None


def check_suffix(path: str | None, what: str, suffixes: tuple[str, ...]) -> None:
    if path is not None and suffixes and not str(path).lower().endswith(suffixes):
        raise PrunekitError(f"{what} {path} must end in {' or '.join(suffixes)}.")


#: steps, solver, guidance, labels, weights, batch, device: the sampling settings
#: (:class:`prunekit_lfm.sampling.SamplingConfig`) of sample, c2f-sweep and compare.
sampling_options = [
    click.option("--n", "n", type=POSITIVE, default=64, show_default=True, help="Number of samples."),
    seed_option("Noise seed: sample i starts from noise drawn from (seed, i)."),
    click.option("--steps", type=POSITIVE, default=60, show_default=True,
                 help="ODE steps on the uniform grid t_k = k/steps (t = 0 noise, t = 1 data)."),
    click.option("--solver", type=click.Choice(["euler", "heun"]), default="euler", show_default=True,
                 help="Euler (1 call per step) or Heun (2 calls per step)."),
    click.option("--cfg", type=float, default=1.0, show_default=True,
                 help="Guidance scale: v = v_uncond + cfg (v_cond - v_uncond); 1 = no guidance."),
    click.option("--labels", multiple=True,
                 help="Class labels (conditional runs): one for all samples or one per sample; "
                      "comma list or repeated. Default: sample i gets label i mod classes."),
    click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights."),
    click.option("--batch-size", type=POSITIVE, default=64, show_default=True, help="Samples per batch."),
    device_option(),
]
