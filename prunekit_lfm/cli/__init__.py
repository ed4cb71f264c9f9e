"""``prunekit lfm ...``: the plug-in's commands, loaded on demand.

This module must stay importable without torch (``prunekit --help`` lists it); each
command module imports torch itself.
"""

from __future__ import annotations

import errno
import functools
import importlib

import click

from prunekit.cli.params import user_message
from prunekit.errors import PrunekitError
from prunekit.params import ParamError

COMMANDS = {
    "embed": "prunekit_lfm.cli.embed:embed",
    "encode": "prunekit_lfm.cli.latents:encode",
    "train-vae": "prunekit_lfm.cli.latents:train_vae",
    "train": "prunekit_lfm.cli.train:train",
    "sample": "prunekit_lfm.cli.sample:sample",
    "c2f-sweep": "prunekit_lfm.cli.sample:c2f_sweep",
    "score": "prunekit_lfm.cli.score:score",
    "compare": "prunekit_lfm.cli.evaluate:compare",
    "metrics": "prunekit_lfm.cli.evaluate:metrics",
}


class LazyGroup(click.Group):
    """Imports a command's module only when it runs; checks the dependencies first."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        command = getattr(importlib.import_module(module), attr)
        return _checked(command, name)


def _checked(command: click.Command, name: str) -> click.Command:
    """Run ``command`` only when torch and diffusers import (its --help works without them)."""
    callback = command.callback
    if callback is None or getattr(callback, "_requires_plugin", False):
        return command

    @functools.wraps(callback)
    def run(*args, **kwargs):
        from prunekit_lfm.guards import is_write_error
        from prunekit_lfm.requirements import require_plugin

        require_plugin(f"lfm {name}")
        try:
            return callback(*args, **kwargs)
        except ParamError as exc:  # the library names parameters; say this command's flags
            raise PrunekitError(user_message(exc, command)) from exc
        except Exception as exc:  # a file-system error (full disk, I/O) is the user's to fix
            if not is_write_error(exc) or getattr(exc, "errno", None) == errno.EPIPE:
                raise
            raise PrunekitError(f"lfm {name}: {exc}") from exc

    run._requires_plugin = True  # type: ignore[attr-defined]
    command.callback = run
    return command


@click.group(cls=LazyGroup)
def lfm() -> None:
    """Latent flow matching: encode, train on a selection, sample coarse-to-fine, score, evaluate.

    Time runs from noise (t = 0) to data (t = 1).
    """
