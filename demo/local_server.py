"""What the local servers perfops starts (the demo Prometheus; the CLI's Prefect server,
`demo.prefect_server`; the test suite's stand-ins) share: a free port on 127.0.0.1 and the
start/stop/context-manager protocol."""

from __future__ import annotations

import socket
import threading
from abc import ABC, abstractmethod
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class ThreadedHttpServer(LocalServer):
    """A `LocalServer` that is an `http.server` on a free port of 127.0.0.1, served from a
    daemon thread: a subclass's `start()` calls `_serve(handler class)` and returns self."""

    _server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:<port>` of the running server."""
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
