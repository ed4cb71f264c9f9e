"""``--engine``, ``--workers``, ``--ray-address``: where a command's chunk and cluster tasks run.

Any command that maps work over chunks or clusters takes these options with
:func:`engine_options` and runs its library call inside :func:`running_on`, which starts
the engine and makes it the run context's (:mod:`prunekit.runtime.context`)::

    @engine_options
    def cmd(..., engine, workers, ray_address): ...
        with running_on(engine, workers, ray_address):
            result = library_call(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from prunekit.runtime.context import get_runtime, runtime
from prunekit.runtime.engine import ENGINES, MAX_WORKERS, Engine, make_engine


def engine_options(fn):
    """Add ``--engine``, ``--workers`` and ``--ray-address`` to a command."""
    fn = click.option(
        "--ray-address", default=None, metavar="ADDR",
        help="[ray] Join this Ray cluster ('auto' = the one 'ray start' made on this machine). "
             "Without it a local Ray cluster of --workers CPUs starts and stops with the command.",
    )(fn)
    fn = click.option(
        "--workers", default=None, type=click.IntRange(1, MAX_WORKERS),
        help="Tasks run at a time (default: local, one per core; ray, the cluster's CPUs). "
             "Results do not depend on it.",
    )(fn)
    return click.option(
        "--engine", type=click.Choice(ENGINES), default="local", show_default=True,
        help="Where chunk and cluster tasks run: threads here, or a Ray cluster "
             '(pip install "prunekit[ray]"). Same inputs and seed give the same arrays on both.',
    )(fn)


@contextlib.contextmanager
def running_on(engine: str, workers: int | None, ray_address: str | None) -> Iterator[Engine]:
    """Start the engine, make it the run context's, and stop what it started at the end.

    Under ``--quiet`` (the run context's ``progress`` off) Ray's own log lines are silenced too.
    """
    quiet = not get_runtime().progress
    with make_engine(engine, workers=workers, ray_address=ray_address, quiet=quiet) as eng, \
            runtime(engine=eng):
        yield eng
