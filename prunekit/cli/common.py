"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from ..atomic import check_output
from ..budget import set_budget
from ..embeddings import DEFAULT_KEY, Embeddings, load_embeddings
from ..errors import PrunekitError
from ..seeds import SEED_MAX

quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars (they are also off when stderr is not a terminal)."
)
_key = click.option(
    "--key", default=DEFAULT_KEY, show_default=True,
    help="Dataset (HDF5), array (npz) or column (Parquet) holding the embeddings.",
)
ID_KEY_META = "prunekit.id_key"


def _remember_id_key(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta[ID_KEY_META] = value


def _set_memory(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    set_budget(value)  # None clears a budget left by an earlier call in the same process


id_key_option = click.option(
    "--id-key", default=None, expose_value=False, callback=_remember_id_key,
    help="Dataset/column with the ids (default: 'ids' in HDF5/npz; 'id', 'key' or "
         "'image_path' in Parquet and clip-retrieval metadata).",
)
memory_option = click.option(
    "--memory", default=None, metavar="SIZE", expose_value=False, callback=_set_memory,
    help="Memory budget beyond a few bytes per row, e.g. 4G (default: PRUNEKIT_MEMORY, "
         "else min(25% of available memory, 8G)).",
)


def key_option(fn):
    """``--key``, ``--id-key`` and ``--memory``: how to read EMB, and how much memory to use."""
    return _key(id_key_option(memory_option(fn)))


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
    """EMB (a file, a directory or a glob of shards) with the command's --id-key."""
    ctx = click.get_current_context(silent=True)
    id_key = ctx.meta.get(ID_KEY_META) if ctx is not None else None
    return load_embeddings(path, key=key, id_key=id_key, drop_nonfinite=drop_nonfinite)


__all__ = [
    "MultiValueCommand",
    "check_output",
    "drop_option",
    "expand_values",
    "id_key_option",
    "is_number",
    "is_value",
    "key_option",
    "memory_option",
    "open_embeddings",
    "quiet_option",
    "seed_option",
    "split_values",
]
