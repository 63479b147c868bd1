"""`python -m perfops` runs the CLI."""

from perfops.cli import entrypoint

entrypoint()
