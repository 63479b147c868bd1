"""Free TCP port helper for the local servers perfops starts (demo Prometheus, test stand-ins)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The socket is closed before returning, so there is a small race window; good enough for
    servers that cannot bind port 0 themselves (Prometheus, aiosmtpd's Controller).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
