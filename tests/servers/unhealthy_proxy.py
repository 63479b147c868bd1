"""A reverse proxy with no healthy backend, as Envoy or nginx in front of Prometheus answers
while Prometheus is down or restarting: every request (any method, any path) gets the same
status (503 by default, or e.g. 502, 504, 429) with a plain-text body, and `Retry-After` when
given. Every request is counted (`requests`), so a test sees the client's retries."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from demo.local_server import ThreadedHttpServer


class UnhealthyProxy(ThreadedHttpServer):
    def __init__(
        self, status: int = 503, body: str = "no healthy upstream", retry_after: int | None = None
    ) -> None:
        self.status, self.body, self.retry_after = status, body, retry_after
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.origin

    def start(self) -> UnhealthyProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                data = proxy.body.encode()
                self.send_response(proxy.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                if proxy.retry_after is not None:
                    self.send_header("Retry-After", str(proxy.retry_after))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)
        return self
