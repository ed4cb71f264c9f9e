"""``python -m prunekit`` runs the CLI (useful under ``torchrun``)."""

from prunekit.cli import main

main()
