"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import click

from prunekit.errors import PrunekitError
from prunekit.io.atomic import check_output
from prunekit.io.embeddings import DEFAULT_KEY, Embeddings, load_embeddings
from prunekit.runtime.budget import parse_memory_option
from prunekit.runtime.context import RunContext, use_context
from prunekit.seeds import SEED_MAX

quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars (they are also off when stderr is not a terminal)."
)
_key = click.option(
    "--key", default=DEFAULT_KEY, show_default=True,
    help="Dataset (HDF5), array (npz) or column (Parquet) holding the embeddings.",
)
_id_key = click.option(
    "--id-key", default=None,
    help="Dataset/column with the ids (default: 'ids' in HDF5/npz; 'id', 'key' or "
         "'image_path' in Parquet and clip-retrieval metadata).",
)
_allow_external = click.option(
    "--allow-external", is_flag=True, default=None,
    help="Let HDF5 embeddings follow external links, external storage and virtual datasets "
         "into other files (refused by default: a file could make us read any file).",
)
_memory = click.option(
    "--memory", default=None, metavar="SIZE",
    help="Memory budget beyond a few bytes per row, e.g. 4G (default: PRUNEKIT_MEMORY, "
         "else min(25% of available memory, 8G)).",
)
# Options that only shape the run context: the command function never sees them.
CONTEXT_ONLY = ("id_key", "allow_external", "memory")
_IN_CONTEXT = "__prunekit_run_context__"


def run_context_from(options: dict) -> RunContext:
    """The run context of one command, built from its options (``--key``, ``--id-key``,
    ``--allow-external``, ``--memory``, ``--quiet``); the context-only ones are removed
    from ``options``. Engine and work directory join later (``running_on``, ``--resume``)."""
    memory = options.pop("memory", None)
    return RunContext(
        memory=None if memory is None else parse_memory_option(memory),
        progress=not options.get("quiet", False),
        key=options.get("key") or DEFAULT_KEY,
        id_key=options.pop("id_key", None),
        allow_external=bool(options.pop("allow_external", None)),
    )


def in_run_context(fn):
    """Run the command inside the run context its options describe, built once per call
    however many option groups ask for it (:func:`run_context_from`)."""
    if getattr(fn, _IN_CONTEXT, False):
        return fn

    @functools.wraps(fn)
    def command(*args, **options):
        with use_context(run_context_from(options)):
            return fn(*args, **options)

    setattr(command, _IN_CONTEXT, True)
    return command


def id_key_option(fn):
    """``--id-key``: where EMB's ids are (a run-context option)."""
    return in_run_context(_id_key(fn))


def allow_external_option(fn):
    """``--allow-external``: HDF5 embeddings may read other files (a run-context option)."""
    return in_run_context(_allow_external(fn))


def memory_option(fn):
    """``--memory``: the memory budget (a run-context option)."""
    return in_run_context(_memory(fn))


def key_option(fn):
    """``--key``, ``--id-key``, ``--allow-external`` and ``--memory``: how to read EMB, and
    how much memory to use."""
    return _key(id_key_option(allow_external_option(memory_option(fn))))


drop_option = click.option(
    "--drop-nonfinite",
    is_flag=True,
    help="Skip rows with NaN/inf instead of failing; selections still index the original rows.",
)
SEED_TYPE = click.IntRange(0, SEED_MAX)


def seed_option(help: str = "Seed of every random choice.", default: int = 0):  # noqa: A002
    """``--seed``: an integer 0 <= seed < 2**63, the one rule of every command."""
    return click.option("--seed", default=default, show_default=True, type=SEED_TYPE,
                        help=help + " An integer in [0, 2**63).")


def is_number(token: str) -> bool:
    """Whether ``token`` reads as a number (so it is a value, not DATA or an option)."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def is_value(token: str) -> bool:
    """Anything but an option."""
    return not token.startswith("-")


def expand_values(args: Sequence[str], options: dict[str, Callable[[str], bool]]) -> list[str]:
    """Rewrite ``--pr 0.25 0.5`` as ``--pr 0.25 --pr 0.5`` for the options in ``options``.

    After an option's own value, following tokens that its predicate accepts are taken as
    more values of the same option; anything else (another option, an argument) ends the
    run. ``--`` ends all rewriting.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        out.append(tok)
        i += 1
        if tok == "--":
            out.extend(args[i:])
            break
        name = tok.split("=", 1)[0]
        if name not in options:
            continue
        if "=" not in tok and i < len(args):
            out.append(args[i])
            i += 1
        while i < len(args) and options[name](args[i]):
            out += [name, args[i]]
            i += 1
    return out


class MultiValueCommand(click.Command):
    """A command whose ``multiple=True`` options in :attr:`several` also take several values
    after one flag (``--pr 0.25 0.5``), besides repeats and comma lists (:func:`split_values`).

    Subclass and set ``several = {"--pr": is_number, ...}``.
    """

    several: dict[str, Callable[[str], bool]] = {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_values(args, self.several))


def split_values(values: Sequence[str], cast: Callable[[str], object], option: str) -> list:
    """The values of a multi-value option: repeats, and comma or space lists in each."""
    out = []
    for v in values:
        for part in v.replace(",", " ").split():
            try:
                out.append(cast(part))
            except (ValueError, OverflowError) as exc:
                raise PrunekitError(f"{option} takes numbers, got '{part}'.") from exc
    return out


def open_embeddings(path: str, key: str, drop_nonfinite: bool) -> Embeddings:
    """EMB (a file, a directory or a glob of shards) as the run context says to read it
    (``--id-key``, ``--allow-external``)."""
    return load_embeddings(path, key=key, drop_nonfinite=drop_nonfinite)


__all__ = [
    "MultiValueCommand",
    "allow_external_option",
    "check_output",
    "drop_option",
    "expand_values",
    "id_key_option",
    "in_run_context",
    "is_number",
    "is_value",
    "key_option",
    "memory_option",
    "open_embeddings",
    "quiet_option",
    "run_context_from",
    "seed_option",
    "split_values",
]
