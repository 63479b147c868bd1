"""What the local servers perfops starts (the demo Prometheus; the CLI's Prefect server,
`demo.prefect_server`; the test suite's stand-ins) share: a free port on 127.0.0.1 and the
start/stop/context-manager protocol."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The socket is closed before returning, so there is a small race window; good enough for
    servers that cannot bind port 0 themselves (Prometheus, aiosmtpd's Controller).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer(ABC):
    """A server on 127.0.0.1: ``start()`` returns self, ``stop()`` may be called at any time
    (again); ``with server:`` starts it and stops it at the end."""

    @abstractmethod
    def start(self) -> Self:
        """Start serving; raise if already started."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and release the port and threads/processes; a no-op when not running."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
