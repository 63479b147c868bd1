"""Free TCP port helper for the local stand-in servers (shared with perfops' own servers)."""

from demo.local_server import free_port

__all__ = ["free_port"]
