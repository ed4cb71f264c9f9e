"""The ``prunekit`` command line: a thin layer over the library.

Commands are loaded lazily (so ``prunekit score`` never imports what ``prunekit lfm``
needs). Plug-ins add commands through the entry-point group ``prunekit.plugins``.

Exit statuses: 0 success; 2 a user error (bad file, bad option: one line "Error: ...",
no traceback, nothing written); 130 interrupted (Ctrl-C: no output file is left); 1 an
internal error (a bug: the traceback is shown).
"""

from __future__ import annotations

import errno
import importlib
import sys
from importlib.metadata import entry_points

import click

from prunekit._version import __version__
from prunekit.errors import PrunekitError

BUILTIN = {
    "info": "prunekit.cli.info:info",
    "score": "prunekit.cli.score:score",
    "select": "prunekit.cli.select:select",
    "export": "prunekit.cli.export:export",
    "inspect": "prunekit.cli.inspect:inspect",
    "synth": "prunekit.cli.synth:synth",
    "stability": "prunekit.cli.stability:stability",
    "plan": "prunekit.cli.plan:plan_command",
}


class UserError(click.ClickException):
    """A PrunekitError as the CLI shows it: one line, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo("Error: " + " ".join(self.format_message().splitlines()), err=True)


EXIT_USER = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _fail(message: str, code: int) -> None:
    click.echo(" ".join(message.split("\n")), err=True)
    sys.exit(code)


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
            from prunekit.cli.params import user_message  # names the command's flags

            name = ctx.invoked_subcommand
            command = self.get_command(ctx, name) if name else None
            raise UserError(user_message(exc, command)) from exc

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Every failure ends in one line on stderr and a fixed exit status (see the module doc)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # a group called without a command: its help
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx is not None else "prunekit"
            _fail(f"Error: {exc.format_message()} (see '{cmd} --help')", EXIT_USER)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.Abort) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt)
            _fail("Interrupted." if interrupted else "Aborted.", EXIT_INTERRUPTED if interrupted else 1)
        except MemoryError:
            _fail("Error: out of memory; ask for less (fewer rows, points or features).", EXIT_USER)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            sys.exit(0)  # the reader of our output went away (e.g. `| head`)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


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
