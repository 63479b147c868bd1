"""A tiny Slack Web API stand-in for ``slack_sdk.WebClient(base_url=stand_in.base_url)``.

slack-sdk always POSTs (``conversations.info`` included): ``chat.postMessage``/``chat.update`` as
JSON, most other methods form-encoded; query-string parameters are merged in too. Like real Slack,
API errors are HTTP 200 with ``{"ok": false, "error": ...}``; only injected faults
(:meth:`SlackStandIn.fail_next`) use other status codes.

slack-sdk retry behaviour (verified against this stand-in):
- ``RateLimitErrorRetryHandler`` retries a 429 after ``Retry-After`` + random 0-1 s.
- A 500/503 raises ``SlackApiError`` unless ``ServerErrorRetryHandler`` is in ``retry_handlers``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from demo.local_server import LocalServer

JsonDict = dict[str, Any]

DEFAULT_TOKEN = "xoxb-test-token"
_FAULT_ERRORS = {429: "ratelimited", 500: "internal_error", 503: "service_unavailable"}


@dataclass(frozen=True)
class SlackRequest:
    """One HTTP request received by the stand-in (faulted ones included)."""

    method: str  # API method, e.g. "chat.postMessage"
    headers: dict[str, str]
    body: JsonDict  # JSON body, or form/query fields; ``blocks``/``attachments`` JSON-decoded
    time: float
    status: int  # HTTP status that was returned


@dataclass(frozen=True)
class _Fault:
    status: int
    retry_after: int | None


class SlackStandIn(LocalServer):
    """Slack Web API stand-in on 127.0.0.1:<free port> served from a background thread."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._requests: list[SlackRequest] = []
        self._messages: list[JsonDict] = []
        self._faults: deque[_Fault] = deque()
        self._last_ts_us = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._methods: dict[str, Callable[[JsonDict], JsonDict]] = {
            "api.test": lambda body: {"ok": True, "args": body},
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "conversations.info": self._conversations_info,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
        }
        self._delays: deque[float] = deque()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SlackStandIn is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def start(self) -> SlackStandIn:
        if self._server is not None:
            raise RuntimeError("SlackStandIn already started")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        # Handler threads are joined on server_close(), so nothing outlives stop().
        self._server.daemon_threads = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-stand-in"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    # -- test API ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[SlackRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def messages(self) -> list[JsonDict]:
        """Posted messages: channel, ts, text, blocks, thread_ts, updates (earlier versions)."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def fail_next(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests with HTTP ``status`` before normal handling."""
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(count))

    @property
    def faults_pending(self) -> int:
        """Injected faults not yet served (they wait for the next requests)."""
        with self._lock:
            return len(self._faults)

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Handle the next ``count`` requests at once but answer only after ``seconds``: a
        client that times out has had its message posted anyway."""
        with self._lock:
            self._delays.extend(seconds for _ in range(count))

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._messages.clear()
            self._faults.clear()
            self._delays.clear()

    # -- request handling ----------------------------------------------------------------------

    def handle(
        self, method: str, headers: dict[str, str], body: JsonDict
    ) -> tuple[int, dict[str, str], JsonDict]:
        """Return (HTTP status, extra headers, JSON payload) and record the request."""
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            delay = self._delays.popleft() if self._delays else 0.0
        extra: dict[str, str] = {}
        if fault is not None:
            status = fault.status
            payload: JsonDict = {"ok": False, "error": _FAULT_ERRORS.get(status, "fatal_error")}
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
        else:
            status = 200
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.token}":
                payload = {"ok": False, "error": "invalid_auth"}
            elif method in self._methods:
                payload = self._methods[method](body)
            else:
                payload = {"ok": False, "error": "unknown_method"}
        with self._lock:
            self._requests.append(SlackRequest(method, headers, body, time.time(), status))
        if delay:  # handled (a message is posted), but the answer comes late
            time.sleep(delay)
        return status, extra, payload

    def _next_ts(self) -> str:
        # Caller holds the lock. Slack timestamps are "seconds.microseconds", unique per channel.
        self._last_ts_us = max(self._last_ts_us + 100, int(time.time() * 1_000_000))
        seconds, micros = divmod(self._last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def _auth_test(self, body: JsonDict) -> JsonDict:
        return {
            "ok": True,
            "url": "https://perfops-test.slack.com/",
            "team": "perfops-test",
            "user": "perfops-bot",
            "team_id": "T00000001",
            "user_id": "U00000001",
            "bot_id": "B00000001",
            "is_enterprise_install": False,
        }

    def _post_message(self, body: JsonDict) -> JsonDict:
        channel = body.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not (body.get("text") or body.get("blocks") or body.get("attachments")):
            return {"ok": False, "error": "no_text"}
        with self._lock:
            ts = self._next_ts()
            record: JsonDict = {
                "channel": channel,
                "ts": ts,
                "text": body.get("text", ""),
                "blocks": body.get("blocks"),
                "thread_ts": body.get("thread_ts"),
                "metadata": body.get("metadata"),
                "updates": [],
            }
            self._messages.append(record)
            message = _message_payload(record)
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, body: JsonDict) -> JsonDict:
        channel, ts = body.get("channel"), body.get("ts")
        with self._lock:
            record = next(
                (m for m in self._messages if m["channel"] == channel and m["ts"] == ts), None
            )
            if record is None:
                return {"ok": False, "error": "message_not_found"}
            record["updates"].append({"text": record["text"], "blocks": record["blocks"]})
            if "text" in body:
                record["text"] = body["text"]
            if "blocks" in body:
                record["blocks"] = body["blocks"]
            message = _message_payload(record)
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": message["text"],
            "message": message,
        }

    def _history(self, body: JsonDict) -> JsonDict:
        """Top-level messages of a channel, newest first (``oldest``/``latest`` bounds); like
        Slack, ``metadata`` only with ``include_all_metadata``; no pagination (``limit`` caps)."""
        channel = body.get("channel")
        oldest, latest = float(body.get("oldest") or 0), float(body.get("latest") or 9e12)
        limit = int(body.get("limit") or 100)
        with_meta = str(body.get("include_all_metadata", "")).lower() in ("1", "true")
        with self._lock:
            found = [
                _message_payload(m, with_meta)
                for m in self._messages
                if m["channel"] == channel
                and m["thread_ts"] is None
                and oldest <= float(m["ts"]) <= latest
            ]
        found.reverse()
        return {"ok": True, "messages": found[:limit], "has_more": len(found) > limit}

    def _replies(self, body: JsonDict) -> JsonDict:
        """A thread: its parent first, then the replies oldest first."""
        channel, ts = body.get("channel"), body.get("ts")
        with_meta = str(body.get("include_all_metadata", "")).lower() in ("1", "true")
        with self._lock:
            found = [
                _message_payload(m, with_meta)
                for m in self._messages
                if m["channel"] == channel and (m["ts"] == ts or m["thread_ts"] == ts)
            ]
        if not found:
            return {"ok": False, "error": "thread_not_found"}
        return {"ok": True, "messages": found, "has_more": False}

    def _conversations_info(self, body: JsonDict) -> JsonDict:
        channel = str(body.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        return {
            "ok": True,
            "channel": {
                "id": channel,
                "name": channel.lstrip("#").lower(),
                "is_channel": True,
                "is_private": False,
                "is_archived": False,
                "is_member": True,
            },
        }


def _message_payload(record: JsonDict, with_metadata: bool = False) -> JsonDict:
    message: JsonDict = {
        "type": "message",
        "user": "U00000001",
        "bot_id": "B00000001",
        "text": record["text"],
        "ts": record["ts"],
    }
    if record["blocks"] is not None:
        message["blocks"] = copy.deepcopy(record["blocks"])
    if record["thread_ts"] is not None:
        message["thread_ts"] = record["thread_ts"]
    if with_metadata and record.get("metadata") is not None:
        message["metadata"] = copy.deepcopy(record["metadata"])
    return message


def _parse_body(content_type: str, raw: bytes, query: str) -> JsonDict:
    body: JsonDict = dict(parse_qsl(query, keep_blank_values=True))
    if "application/json" in content_type and raw:
        parsed = json.loads(raw)
        if isinstance(parsed, dict):
            body.update(parsed)
    elif raw:
        body.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    for key in ("blocks", "attachments"):  # form-encoded clients send these as JSON strings
        if isinstance(body.get(key), str):
            with contextlib.suppress(ValueError):
                body[key] = json.loads(body[key])
    return body


def _make_handler(stand_in: SlackStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # never let a stuck client block stop()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            method = url.path.rsplit("/", 1)[-1]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = _parse_body(self.headers.get("Content-Type", ""), raw, url.query)
            except ValueError:
                body = {"_raw": raw.decode("utf-8", "replace")}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = stand_in.handle(method, headers, body)
            data = json.dumps(payload).encode("utf-8")
            # A client that timed out (see delay_next) has gone: nothing to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

    return Handler
