"""``python -m prunekit`` runs the CLI (useful under ``torchrun``)."""

from .cli import main

main()
