"""`python -m cli` runs the `perfops` command (through a warm process when one matches:
cli/warm.py)."""

from cli.warm import entrypoint

entrypoint()
