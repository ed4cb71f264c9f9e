"""The ``prunekit`` command line: a thin layer over the library.

Commands are loaded lazily (so ``prunekit score`` never imports what ``prunekit lfm``
needs). Plug-ins add commands through the entry-point group ``prunekit.plugins``.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import click

from .. import __version__
from ..errors import PrunekitError

BUILTIN = {
    "info": "prunekit.cli.info:info",
    "score": "prunekit.cli.score:score",
    "select": "prunekit.cli.select:select",
    "export": "prunekit.cli.export:export",
    "inspect": "prunekit.cli.inspect:inspect",
    "synth": "prunekit.cli.synth:synth",
    "stability": "prunekit.cli.stability:stability",
}


class UserError(click.ClickException):
    """A PrunekitError as the CLI shows it: one line, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="prunekit.plugins")}


class PrunekitGroup(click.Group):
    """Loads commands on demand and turns PrunekitError into exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({**BUILTIN, **_plugins()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = BUILTIN.get(name) or _plugins().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            if name in BUILTIN:
                raise
            return _missing_plugin(name, exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrunekitError as exc:
            raise UserError(str(exc)) from exc


def _missing_plugin(name: str, exc: ImportError) -> click.Command:
    """A stand-in command that explains how to install a plug-in's dependencies."""

    @click.command(name, context_settings={"ignore_unknown_options": True}, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stand_in(args):
        raise UserError(
            f"'prunekit {name}' needs the plug-in's dependencies ({exc}). "
            'Install them with: pip install "prunekit[lfm]"'
        )

    stand_in.short_help = "(needs: pip install 'prunekit[lfm]')"
    return stand_in


@click.group(cls=PrunekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prunekit")
def main() -> None:
    """Score and select subsets of embedding sets; analyse and exploit flow-matching stability.

    Pipeline: embeddings.h5 -> `score` -> scores.h5 -> `select` -> selection.h5.
    pr always means the fraction REMOVED (--pr 0.8 keeps 20 %).
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
