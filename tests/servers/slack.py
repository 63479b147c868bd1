"""A Slack Web API stand-in for ``slack_sdk.WebClient(base_url=stand_in.base_url)``, as strict as
Slack where perfops depends on it.

slack-sdk always POSTs (``conversations.info`` included): ``chat.postMessage``/``chat.update`` as
JSON, most other methods form-encoded; query-string parameters are merged in too. Like real Slack,
API errors are HTTP 200 with ``{"ok": false, "error": ...}``; only injected faults
(:meth:`SlackStandIn.fail_next`) use other status codes.

What it holds Slack to (each one a way perfops once failed against the real service):

- **Channels are ids.** The workspace has channels (:meth:`SlackStandIn.add_channel`; a default
  set exists, the bot a member of each), each with an id (``C...``) and a name. Only
  ``chat.postMessage`` accepts a name (``#name`` or ``name``), and it answers with the channel's
  *id*; ``chat.update``, ``conversations.history``, ``conversations.replies`` and
  ``conversations.info`` take ids only and answer ``channel_not_found`` for a name.
- **Membership.** A public channel the bot is not in: ``not_in_channel`` for posts and reads; a
  private channel it is not in does not exist for it (``channel_not_found``, and
  ``conversations.list`` does not list it). An archived channel: ``is_archived`` for posts.
- **Paging.** ``conversations.list`` (``types``, ``exclude_archived``, ``limit`` default 100),
  ``conversations.history`` (newest first, ``oldest``/``latest`` exclusive unless ``inclusive``,
  ``limit`` default 100) and ``conversations.replies`` (``limit`` default 1000) page with
  ``cursor`` and ``response_metadata.next_cursor``.
- **Threads.** A reply with ``reply_broadcast`` also shows in the channel's history
  (``subtype: thread_broadcast``); a thread's parent carries ``reply_count``; ``metadata`` only
  with ``include_all_metadata``.
- **Message metadata.** ``chat.postMessage`` and ``chat.update`` with ``metadata`` outside the
  shape Slack documents (``decisions.slack_metadata.slack_metadata_problems``: payload values
  strings, numbers, booleans, flat objects or arrays of flat objects; no null, no nesting) are
  refused with ``invalid_metadata_format`` (ok false, nothing stored); the problems are in
  ``response_metadata.messages``. ``chat.update`` with valid ``metadata`` replaces it.
- **Partial failures.** :meth:`SlackStandIn.fail_next` with ``after_handling=True`` answers a
  500 for a request it *did* handle (the message is stored); :meth:`SlackStandIn.delay_next`
  stores at once and answers after the client's timeout. Either fault can wait for one method.

slack-sdk retry behaviour (verified against this stand-in):
- ``RateLimitErrorRetryHandler`` retries a 429 after ``Retry-After`` + random 0-1 s.
- A 500/503 raises ``SlackApiError`` unless ``ServerErrorRetryHandler`` is in ``retry_handlers``;
  with it, a ``chat.postMessage`` answered 500 after Slack stored it is posted twice.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from decisions.slack_metadata import slack_metadata_problems
from demo.local_server import LocalServer

JsonDict = dict[str, Any]

DEFAULT_TOKEN = "xoxb-test-token"
# The channels every stand-in starts with (the bot a member of each): the test definitions',
# deployments/slos.yaml's and the block's defaults.
DEFAULT_CHANNELS = (
    "oncall",
    "incidents",
    "platform-oncall",
    "perfops",
    "team-lead",
    "eng-manager",
    "cto",
)
_FAULT_ERRORS = {429: "ratelimited", 500: "internal_error", 503: "service_unavailable"}
# Methods that take a channel id only (a name is `channel_not_found`, as in Slack).
_ID_ONLY = {"chat.update", "conversations.history", "conversations.replies", "conversations.info"}


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
    method: str | None  # only a request of this method takes the fault
    after_handling: bool  # handle the request (store the message), then answer the fault


@dataclass(frozen=True)
class _Delay:
    seconds: float
    method: str | None


@dataclass
class Channel:
    """A conversation of the stand-in's workspace."""

    id: str
    name: str
    is_private: bool = False
    is_archived: bool = False
    is_member: bool = True
    created: int = field(default_factory=lambda: int(time.time()))

    def payload(self) -> JsonDict:
        return {
            "id": self.id,
            "name": self.name,
            "name_normalized": self.name,
            "is_channel": not self.is_private,
            "is_group": False,
            "is_private": self.is_private,
            "is_archived": self.is_archived,
            "is_member": self.is_member,
            "created": self.created,
        }


class SlackStandIn(LocalServer):
    """Slack Web API stand-in on 127.0.0.1:<free port> served from a background thread."""

    def __init__(
        self, token: str = DEFAULT_TOKEN, channels: tuple[str, ...] = DEFAULT_CHANNELS
    ) -> None:
        self.token = token
        self._default_channels = channels
        self._lock = threading.Lock()
        self._requests: list[SlackRequest] = []
        self._messages: list[JsonDict] = []
        self._channels: list[Channel] = []
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._last_ts_us = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._methods: dict[str, Callable[[JsonDict], JsonDict]] = {
            "api.test": lambda body: {"ok": True, "args": body},
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "conversations.info": self._conversations_info,
            "conversations.list": self._conversations_list,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
        }
        self._reset_channels()

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
        """Posted messages, oldest first: channel (its id), ts, text, blocks, thread_ts,
        reply_broadcast, metadata, updates (earlier versions)."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def delete_message(self, channel: str, ts: str) -> None:
        """A person deleted the message `ts` of `channel` (a name or id) in Slack."""
        with self._lock:
            cid = channel if not channel.startswith("#") else self._by_name(channel[1:]).id
            self._messages = [
                m for m in self._messages if not (m["channel"] == cid and m["ts"] == ts)
            ]

    def add_channel(
        self,
        name: str,
        *,
        member: bool = True,
        private: bool = False,
        archived: bool = False,
    ) -> str:
        """Create a channel (`#name` or `name`) and return its id."""
        with self._lock:
            channel = Channel(
                id=f"C{0x5E0000 + len(self._channels):08X}",
                name=name.lstrip("#").lower(),
                is_private=private,
                is_archived=archived,
                is_member=member,
            )
            self._channels.append(channel)
            return channel.id

    def set_member(self, name: str, member: bool) -> None:
        """Invite the bot to (or remove it from) channel `name`."""
        with self._lock:
            self._by_name(name).is_member = member

    def set_archived(self, name: str, archived: bool) -> None:
        """Archive (or unarchive) channel `name`: posts answer `is_archived`, and
        `conversations.list` with `exclude_archived` no longer lists it."""
        with self._lock:
            self._by_name(name).is_archived = archived

    def channel_id(self, name: str) -> str:
        """The id of channel `name` (`#name` or `name`)."""
        with self._lock:
            return self._by_name(name).id

    def channel_name(self, channel_id: str) -> str:
        """`#name` of the channel with `channel_id`."""
        with self._lock:
            return "#" + next(c.name for c in self._channels if c.id == channel_id)

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: int | None = None,
        *,
        method: str | None = None,
        after_handling: bool = False,
    ) -> None:
        """Answer the next ``count`` requests (of ``method`` only, when given) with HTTP
        ``status``. ``after_handling``: handle each first, as Slack did when its answer was a
        500 after it stored the message."""
        with self._lock:
            self._faults.extend(
                _Fault(status, retry_after, method, after_handling) for _ in range(count)
            )

    @property
    def faults_pending(self) -> int:
        """Injected faults and delays not yet served (they wait for the next requests)."""
        with self._lock:
            return len(self._faults) + len(self._delays)

    def delay_next(self, seconds: float, count: int = 1, *, method: str | None = None) -> None:
        """Handle the next ``count`` requests (of ``method`` only, when given) at once but
        answer only after ``seconds``: a client that times out has had its message posted
        anyway."""
        with self._lock:
            self._delays.extend(_Delay(seconds, method) for _ in range(count))

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._messages.clear()
            self._faults.clear()
            self._delays.clear()
        self._reset_channels()

    def _reset_channels(self) -> None:
        with self._lock:
            self._channels.clear()
        for name in self._default_channels:
            self.add_channel(name)

    # -- request handling ----------------------------------------------------------------------

    def _take(self, queue: list[Any], method: str) -> Any:
        # Caller holds the lock: the first fault or delay for this method (or for any).
        for i, item in enumerate(queue):
            if item.method in (None, method):
                return queue.pop(i)
        return None

    def handle(
        self, method: str, headers: dict[str, str], body: JsonDict
    ) -> tuple[int, dict[str, str], JsonDict]:
        """Return (HTTP status, extra headers, JSON payload) and record the request."""
        with self._lock:
            fault: _Fault | None = self._take(self._faults, method)
            delay: _Delay | None = self._take(self._delays, method)
        extra: dict[str, str] = {}
        status = 200
        payload: JsonDict = {}
        if fault is None or fault.after_handling:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.token}":
                payload = {"ok": False, "error": "invalid_auth"}
            elif method in self._methods:
                payload = self._methods[method](body)
            else:
                payload = {"ok": False, "error": "unknown_method"}
        if fault is not None:
            status = fault.status
            payload = {"ok": False, "error": _FAULT_ERRORS.get(status, "fatal_error")}
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
        with self._lock:
            self._requests.append(SlackRequest(method, headers, body, time.time(), status))
        if delay is not None:  # handled (a message is posted), but the answer comes late
            time.sleep(delay.seconds)
        return status, extra, payload

    def _next_ts(self) -> str:
        # Caller holds the lock. Slack timestamps are "seconds.microseconds", unique per channel.
        self._last_ts_us = max(self._last_ts_us + 100, int(time.time() * 1_000_000))
        seconds, micros = divmod(self._last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def _by_name(self, name: str) -> Channel:
        # Caller holds the lock.
        wanted = name.lstrip("#").lower()
        return next(c for c in self._channels if c.name == wanted)

    def _visible(self, channel: Channel) -> bool:
        return not channel.is_private or channel.is_member

    def _resolve(self, method: str, value: Any) -> Channel | JsonDict:
        """The channel a request names, or Slack's error for it. Caller holds the lock."""
        text = str(value or "")
        found = next((c for c in self._channels if c.id == text), None)
        if found is None and method not in _ID_ONLY:
            wanted = text.lstrip("#").lower()
            found = next((c for c in self._channels if c.name == wanted), None)
        if found is None or not self._visible(found):
            return {"ok": False, "error": "channel_not_found"}
        if method == "conversations.info":
            return found
        if not found.is_member:
            return {"ok": False, "error": "not_in_channel"}
        if method in ("chat.postMessage", "chat.update") and found.is_archived:
            return {"ok": False, "error": "is_archived"}
        return found

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
        if not (body.get("text") or body.get("blocks") or body.get("attachments")):
            return {"ok": False, "error": "no_text"}
        refused = _metadata_refusal(body)
        if refused is not None:
            return refused
        with self._lock:
            channel = self._resolve("chat.postMessage", body.get("channel"))
            if isinstance(channel, dict):
                return channel
            ts = self._next_ts()
            thread_ts = body.get("thread_ts") or None
            record: JsonDict = {
                "channel": channel.id,
                "ts": ts,
                "text": body.get("text", ""),
                "blocks": body.get("blocks"),
                "thread_ts": str(thread_ts) if thread_ts else None,
                "reply_broadcast": bool(thread_ts) and _true(body.get("reply_broadcast")),
                "metadata": body.get("metadata"),
                "updates": [],
            }
            self._messages.append(record)
            message = self._payload(record)
        return {"ok": True, "channel": channel.id, "ts": ts, "message": message}

    def _update(self, body: JsonDict) -> JsonDict:
        refused = _metadata_refusal(body)
        if refused is not None:
            return refused
        ts = body.get("ts")
        with self._lock:
            channel = self._resolve("chat.update", body.get("channel"))
            if isinstance(channel, dict):
                return channel
            record = next(
                (m for m in self._messages if m["channel"] == channel.id and m["ts"] == ts), None
            )
            if record is None:
                return {"ok": False, "error": "message_not_found"}
            record["updates"].append({"text": record["text"], "blocks": record["blocks"]})
            if "text" in body:
                record["text"] = body["text"]
            if "blocks" in body:
                record["blocks"] = body["blocks"]
            if body.get("metadata") is not None:
                record["metadata"] = body["metadata"]
            message = self._payload(record)
        return {
            "ok": True,
            "channel": channel.id,
            "ts": ts,
            "text": message["text"],
            "message": message,
        }

    def _history(self, body: JsonDict) -> JsonDict:
        """Top-level messages and thread broadcasts of a channel, newest first; like Slack,
        ``metadata`` only with ``include_all_metadata``; paged by ``cursor``."""
        oldest, latest = float(body.get("oldest") or 0), float(body.get("latest") or 9e12)
        inclusive = _true(body.get("inclusive"))
        with_meta = _true(body.get("include_all_metadata"))
        with self._lock:
            channel = self._resolve("conversations.history", body.get("channel"))
            if isinstance(channel, dict):
                return channel

            def within(ts: float) -> bool:
                if inclusive:
                    return oldest <= ts <= latest
                return oldest < ts < latest

            found = [
                self._payload(m, with_meta)
                for m in self._messages
                if m["channel"] == channel.id
                and (m["thread_ts"] is None or m["reply_broadcast"])
                and within(float(m["ts"]))
            ]
        found.reverse()
        return _page(found, body, "messages", default_limit=100, max_limit=999)

    def _replies(self, body: JsonDict) -> JsonDict:
        """A thread: its parent first, then the replies oldest first (``ts`` may name the
        parent or any reply); paged by ``cursor``."""
        ts = str(body.get("ts") or "")
        with_meta = _true(body.get("include_all_metadata"))
        with self._lock:
            channel = self._resolve("conversations.replies", body.get("channel"))
            if isinstance(channel, dict):
                return channel
            mine = [m for m in self._messages if m["channel"] == channel.id]
            named = next((m for m in mine if m["ts"] == ts), None)
            if named is None:
                return {"ok": False, "error": "thread_not_found"}
            parent = named["thread_ts"] or named["ts"]
            found = [
                self._payload(m, with_meta)
                for m in mine
                if m["ts"] == parent or m["thread_ts"] == parent
            ]
        return _page(found, body, "messages", default_limit=1000, max_limit=1000)

    def _conversations_info(self, body: JsonDict) -> JsonDict:
        with self._lock:
            channel = self._resolve("conversations.info", body.get("channel"))
            if isinstance(channel, dict):
                return channel
            return {"ok": True, "channel": channel.payload()}

    def _conversations_list(self, body: JsonDict) -> JsonDict:
        """Channels of the requested `types` (default public_channel); private ones only where
        the bot is a member; paged by ``cursor``."""
        types = set(str(body.get("types") or "public_channel").split(","))
        exclude_archived = _true(body.get("exclude_archived"))
        with self._lock:
            found = [
                c.payload()
                for c in self._channels
                if self._visible(c)
                and ("private_channel" if c.is_private else "public_channel") in types
                and not (exclude_archived and c.is_archived)
            ]
        return _page(found, body, "channels", default_limit=100, max_limit=1000)

    def _payload(self, record: JsonDict, with_metadata: bool = False) -> JsonDict:
        # Caller holds the lock.
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
            if record["reply_broadcast"]:
                message["subtype"] = "thread_broadcast"
        else:
            replies = [
                m
                for m in self._messages
                if m["channel"] == record["channel"] and m["thread_ts"] == record["ts"]
            ]
            if replies:
                message["thread_ts"] = record["ts"]
                message["reply_count"] = len(replies)
                message["latest_reply"] = replies[-1]["ts"]
        if with_metadata and record.get("metadata") is not None:
            message["metadata"] = copy.deepcopy(record["metadata"])
        return message


def _metadata_refusal(body: JsonDict) -> JsonDict | None:
    """Slack's answer to a ``metadata`` argument outside its documented shape (None: fits, or
    there is none)."""
    if body.get("metadata") is None:
        return None
    problems = slack_metadata_problems(body["metadata"])
    if not problems:
        return None
    return {
        "ok": False,
        "error": "invalid_metadata_format",
        "response_metadata": {"messages": [f"[ERROR] {p}" for p in problems]},
    }


def _true(value: Any) -> bool:
    return str(value or "").lower() in ("1", "true")


def _page(
    items: list[JsonDict], body: JsonDict, key: str, *, default_limit: int, max_limit: int
) -> JsonDict:
    """One page of `items` from the request's ``cursor`` (opaque, as Slack's) and ``limit``."""
    limit = min(int(body.get("limit") or default_limit), max_limit)
    cursor = str(body.get("cursor") or "")
    try:
        start = (
            int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1]) if cursor else 0
        )
    except (ValueError, IndexError):
        return {"ok": False, "error": "invalid_cursor"}
    page = items[start : start + limit]
    more = start + limit < len(items)
    next_cursor = (
        base64.urlsafe_b64encode(f"next:{start + limit}".encode()).decode() if more else ""
    )
    answer: JsonDict = {"ok": True, key: page, "response_metadata": {"next_cursor": next_cursor}}
    if key == "messages":
        answer["has_more"] = more
    return answer


def _parse_body(content_type: str, raw: bytes, query: str) -> JsonDict:
    body: JsonDict = dict(parse_qsl(query, keep_blank_values=True))
    if "application/json" in content_type and raw:
        parsed = json.loads(raw)
        if isinstance(parsed, dict):
            body.update(parsed)
    elif raw:
        body.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    for key in ("blocks", "attachments", "metadata"):  # form-encoded: JSON strings
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
