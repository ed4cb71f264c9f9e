"""``prunekit lfm ...``: the plug-in's commands, loaded on demand.

This module must stay importable without torch (``prunekit --help`` lists it); each
command module imports torch itself.
"""

from __future__ import annotations

import importlib

import click

COMMANDS = {
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
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
def lfm() -> None:
    """Latent flow matching: encode, train on a selection, sample coarse-to-fine, score, evaluate.

    Time runs from noise (t = 0) to data (t = 1).
    """
