"""A Cloudflare-compatible cache purge API stand-in, as strict as Cloudflare where perfops
depends on it: `POST /client/v4/zones/{zone_id}/purge_cache`.

- **Auth**: `Authorization: Bearer <token>` must be the configured token, else 403 with
  Cloudflare's `{"success": false, "errors": [{"code": 10000, "message": "Authentication
  error"}]}`.
- **Zone**: an unknown zone id is 404 (code 7003, "Could not route to ... zone").
- **Body**: JSON with exactly one of `files`, `tags`, `prefixes` (or `purge_everything`), a list
  of non-empty strings; more than 100 items is 400 (code 1073?), as the API answers.
- **Rate**: a token bucket per zone (`rate` requests/s, `burst`): past it, 429 with
  `Retry-After` (whole seconds, rounded up) and code 971 ("Please wait and consider throttling
  your request speed"). A request refused for rate does not purge.
- Faults on demand: `fail_next(status, count)` answers the next requests with a 5xx (nothing
  purged).

Every request is recorded (`requests`), and what was purged (`purged`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from demo.local_server import ThreadedHttpServer

TOKEN = "cf-test-token-123456"
ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
MAX_ITEMS = 100


@dataclass(frozen=True)
class PurgeRequest:
    zone: str
    body: dict[str, Any]
    status: int
    time: float


class CdnStandIn(ThreadedHttpServer):
    def __init__(
        self, token: str = TOKEN, zone: str = ZONE, rate: float = 5.0, burst: int = 5
    ) -> None:
        self.token, self.zone, self.rate, self.burst = token, zone, rate, burst
        self.requests: list[PurgeRequest] = []
        self.purged: dict[str, list[str]] = {"files": [], "tags": [], "prefixes": []}
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._faults: list[int] = []

    @property
    def base_url(self) -> str:
        return f"{self.origin}/client/v4"

    def fail_next(self, status: int = 503, count: int = 1) -> None:
        with self._lock:
            self._faults += [status] * count

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            for v in self.purged.values():
                v.clear()
            self._tokens = float(self.burst)
            self._updated = time.monotonic()
            self._faults.clear()

    def _take(self) -> float | None:
        """None when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self.rate

    def handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["client", "v4", "zones"] or parts[4] != "purge_cache":
            return 404, _error(7000, "No route for that URI"), {}
        zone = parts[3]
        if headers.get("authorization") != f"Bearer {self.token}":
            return 403, _error(10000, "Authentication error"), {}
        if zone != self.zone:
            return 404, _error(7003, "Could not route to /zones/" + zone), {}
        with self._lock:
            if self._faults:
                return self._faults.pop(0), _error(10001, "service unavailable"), {}
            wait = self._take()
            if wait is not None:
                return (
                    429,
                    _error(971, "Please wait and consider throttling your request speed"),
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return 400, _error(1012, "Request must contain a valid JSON body"), {}
        kinds = [k for k in ("files", "tags", "prefixes", "purge_everything") if k in (body or {})]
        if not isinstance(body, dict) or len(kinds) != 1 or len(body) != 1:
            return 400, _error(1012, "exactly one of files, tags, prefixes"), {}
        kind = kinds[0]
        items = body[kind]
        if kind != "purge_everything":
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                return 400, _error(1012, f"{kind} must be a list of non-empty strings"), {}
            if len(items) > MAX_ITEMS:
                return 400, _error(1015, f"Maximum of {MAX_ITEMS} {kind} per request"), {}
            with self._lock:
                self.purged[kind] += items
        return 200, {"success": True, "errors": [], "messages": [], "result": {"id": zone}}, {}

    def start(self) -> CdnStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body, extra = stand_in.handle(self.path, headers, raw)
                try:
                    parsed = json.loads(raw or b"null")
                except ValueError:
                    parsed = None
                with stand_in._lock:
                    stand_in.requests.append(
                        PurgeRequest(self.path.split("/")[4] if self.path.count("/") >= 4 else "",
                                     parsed if isinstance(parsed, dict) else {}, status,
                                     time.monotonic())
                    )  # fmt: skip
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)
        return self


def _error(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
