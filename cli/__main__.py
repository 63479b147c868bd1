"""`python -m cli` runs the `perfops` command."""

from cli.command import entrypoint

entrypoint()
