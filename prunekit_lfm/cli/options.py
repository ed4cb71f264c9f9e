"""Options shared by the ``prunekit lfm`` commands (parsing only; no torch here)."""

from __future__ import annotations

from dataclasses import replace

import click

from prunekit.cli.common import seed_option, split_values  # noqa: F401 (re-exported)
from prunekit.cli.params import options_from
from prunekit.errors import PrunekitError
from prunekit.params import INT64_MAX
from prunekit_lfm.specs import N_SAMPLES, SAMPLING_PARAMS

# Counts and indices become int64 arrays; a larger number is refused by click.
POSITIVE = click.IntRange(1, INT64_MAX)
INDEX = click.IntRange(0, INT64_MAX)
SAMPLING = {p.name: p for p in SAMPLING_PARAMS}


def sampling_option(name: str, help: str | None = None):  # noqa: A002
    """One option of the sampling spec, with another help text where a command words it
    differently (``compare``: "ODE steps.")."""
    p = SAMPLING[name]
    return options_from([p if help is None else replace(p, help=help)])


def device_option(default: str = "auto"):
    """``--device`` (its help and check are the sampling spec's)."""
    return options_from([replace(SAMPLING["device"], default=default)])


def parse_ints(values: tuple[str, ...], what: str) -> list[int] | None:
    """Repeated options and comma lists ("1,2" "3") -> [1, 2, 3]; None when empty."""
    return split_values(values, int, what) or None


def check_suffix(path: str | None, what: str, suffixes: tuple[str, ...]) -> None:
    if path is not None and suffixes and not str(path).lower().endswith(suffixes):
        raise PrunekitError(f"{what} {path} must end in {' or '.join(suffixes)}.")


#: n, then the sampling settings (:data:`prunekit_lfm.specs.SAMPLING_PARAMS`, the fields of
#: :class:`prunekit_lfm.sampling.SamplingConfig`) of sample and c2f-sweep: a decorator.
sampling_options = options_from((N_SAMPLES, *SAMPLING_PARAMS))
