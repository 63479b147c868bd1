"""The load generator's engine: one share of a load test sent to a target over HTTP/1.1
keep-alive connections, on plain asyncio (protocols and callbacks, no per-request coroutine).
No Prefect here: `python -m tasks.load_engine` is the process each share runs in (its plan on
stdin, its result on stdout), and it must start fast. `tasks.load_generator` is the task.

**Open model** (`rps`): every request starts on the arrival schedule
(`decisions.load_schedule.arrival_times`) whether or not earlier ones have answered: when no
connection is free a new one opens (up to `max_connections`, at most MAX_OPENING connects under
way; past that the request waits and the wait counts). Latency is measured from the request's
*intended* start, so a server that stalls for a second shows a second in every request that
should have started meanwhile, instead of silently lowering the rate (coordinated omission).
**Closed model** (`vus`): each virtual user sends, waits for the answer, thinks, and sends again;
latency from the actual send (what Locust's default users and wrk report); kept for comparison
and for think-time journeys. Its rate is set by the target's answers, not by a schedule, so a
token bucket at the plan's `max_rps` (the target block's cap divided between the shares) holds
every send: a user whose send would pass the cap waits for the next token (a wait before the
send, so not in its latency), and the cap holds however fast the target answers. Each share runs
its part of the virtual users (share k of N: users k, k + N, ...).

Errors are recorded by cause, never retried: a retry would hide the error and add load.
Latencies go into HDR histograms (microseconds) per step, per endpoint and per second.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from pydantic import BaseModel, Field, SecretStr

from decisions.load_results import (
    WINDOW_DIGITS,
    Counts,
    ShareResult,
    Window,
    encode,
    new_histogram,
)
from decisions.load_scenarios import (
    MAX_RPS,
    LoadTest,
    Step,
    definition_hash,
    request_problems,
)
from decisions.load_schedule import Shape, arrival_times, scenario_order, share_users, vus_at

LATE_S = 0.010  # a request sent this much after its intended start counts as a late send
DISPATCH_SLICE_S = 0.002
DISPATCH_MIN_S = 0.001  # a request may leave up to 1 ms late (the wait is in its latency)
MONITOR_S = 0.25
DRAIN_GRACE_S = 1.0
CONNECT_TIMEOUT_S = 5.0
WARM_LATENCY_S = 0.05
# Connects under way at most: past it, requests wait for the next free connection (a storm of
# connects when the target slows would otherwise take the generator's CPU and fall further behind)
MAX_OPENING = 16
# The closed model's token bucket holds this much of its rate at most: a burst of users answered
# together may leave at once up to it, and over any window the sends stay under rate x window +
# this (the bucket starts empty, so over the whole test under rate x duration)
PACE_BURST_S = 0.01


class LoadPlan(BaseModel):
    """Everything one share needs. The auth header's value is a secret: it reaches only the
    request bytes."""

    test: LoadTest
    base_url: str
    auth_header: str | None = None  # header name, e.g. Authorization
    auth_value: SecretStr | None = None
    share: int = 0
    shares: int = 1
    max_connections: int = Field(default=1_000, ge=1)
    max_rps: float = Field(
        default=MAX_RPS,
        gt=0,
        le=MAX_RPS,
        description="This share's cap on requests per second (the target's cap / shares): the "
        "closed model's token bucket; the open model's schedule is checked against it before.",
    )
    start_delay_s: float = Field(default=0.05, ge=0, le=60)
    start_at_unix: float | None = Field(
        default=None, description="Wall-clock start shared by every share of one test."
    )


# ------------------------------------------------------------------ HTTP/1.1 over asyncio


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    __slots__ = (
        "buffer",
        "busy",
        "done",
        "fail",
        "head_only",
        "pool",
        "timer",
        "transport",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: Callable[[int, bytes, float], None] | None = None
        self.fail: Callable[[str, float], None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head_only = False
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(
        self,
        data: bytes,
        timeout: float,
        done: Callable[[int, bytes, float], None],
        fail: Callable[[str, float], None],
        head_only: bool,
    ) -> None:
        self.done, self.fail, self.head_only, self.busy = done, fail, head_only, True
        self.timer = self.pool.loop.call_later(timeout, self._timed_out)
        assert self.transport is not None
        self.transport.write(data)

    def _timed_out(self) -> None:
        self._failed("timeout")
        if self.transport is not None:
            self.transport.abort()

    def _failed(self, cause: str) -> None:
        fail, self.fail, self.done = self.fail, None, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.busy = False
        self.pool.discard(self)
        if fail is not None:
            fail(cause, time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None:
            self._failed("connection reset" if exc else "connection closed")
        else:
            self.pool.discard(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if self.done is None:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status = int(buf[9:12])
        except ValueError:
            self._failed("bad response")
            if self.transport is not None:
                self.transport.abort()
            return
        head = bytes(buf[:end]).lower()
        close = b"\r\nconnection: close" in head
        start = end + 4
        if self.head_only or status in (204, 304) or 100 <= status < 200:
            body = b""
            rest = start
        else:
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)].strip())
                if len(buf) < start + length:
                    return
                body = bytes(buf[start : start + length])
                rest = start + length
            elif b"\r\ntransfer-encoding: chunked" in head:
                parsed = _chunked(buf, start)
                if parsed is None:
                    return
                body, rest = parsed
            else:
                return  # body until the server closes: connection_lost ends it
        del buf[:rest]
        done, self.done, self.fail = self.done, None, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.busy = False
        now = time.monotonic()
        if close:
            self.pool.discard(self)
            if self.transport is not None:
                self.transport.close()
        else:
            self.pool.release(self)
        done(status, body, now)


def _chunked(buf: bytearray, at: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buf[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", at)
            if trailer_end < 0:
                return None
            return bytes(body), trailer_end + 2
        if len(buf) < at + size + 2:
            return None
        body += buf[at : at + size]
        at += size + 2


class _Pool:
    """Connections to one origin: idle ones reused, new ones opened up to the cap, and past
    it requests wait in order (their wait counts in their latency)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, tls: bool, cap: int
    ) -> None:
        self.loop, self.host, self.port, self.cap = loop, host, port, cap
        self.ssl = ssl.create_default_context() if tls else None
        self.idle: list[_Conn] = []
        self.count = 0
        self.waiting: deque[tuple[Callable[[_Conn], None], Callable[[str, float], None]]] = deque()
        self.all: set[_Conn] = set()
        self.peak = 0
        self.opening = 0

    def get(self, use: Callable[[_Conn], None], fail: Callable[[str, float], None]) -> None:
        if self.idle:
            use(self.idle.pop())
        elif self.count < self.cap and self.opening < MAX_OPENING:
            self.count += 1
            self.opening += 1
            self.peak = max(self.peak, self.count)
            self.loop.create_task(self._open(use, fail))
        else:  # at the cap, or enough connects under way: the next free connection serves it
            self.waiting.append((use, fail))

    async def _open(self, use: Callable[[_Conn], None], fail: Callable[[str, float], None]) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=self.ssl
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            self.count -= 1
            self.opening -= 1
            fail(_connect_cause(exc), time.monotonic())
            self._next_waiter()
            return
        self.opening -= 1
        self.all.add(conn)
        use(conn)
        self._next_waiter()  # more waiting: open the next connection for them

    async def warm(self, count: int) -> None:
        """Open `count` connections before the schedule starts (a storm of connects at time 0
        would itself delay the first second's requests)."""
        wanted = max(0, min(count, self.cap) - self.count)
        self.count += wanted
        self.peak = max(self.peak, self.count)
        results = await asyncio.gather(
            *(
                asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: _Conn(self), self.host, self.port, ssl=self.ssl
                    ),
                    CONNECT_TIMEOUT_S,
                )
                for _ in range(wanted)
            ),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                self.count -= 1
            else:
                self.all.add(r[1])
                self.idle.append(r[1])

    def release(self, conn: _Conn) -> None:
        if self.waiting:
            use, _ = self.waiting.popleft()
            use(conn)
        else:
            self.idle.append(conn)

    def discard(self, conn: _Conn) -> None:
        if conn in self.all:
            self.all.discard(conn)
            self.count -= 1
            if conn in self.idle:
                self.idle.remove(conn)
            self._next_waiter()

    def _next_waiter(self) -> None:
        if self.waiting and self.count < self.cap and self.opening < MAX_OPENING:
            use, fail = self.waiting.popleft()
            self.get(use, fail)

    def close(self) -> None:
        for conn in list(self.all):
            if conn.transport is not None:
                conn.transport.abort()
        for _, fail in self.waiting:
            fail("not sent: test ended", time.monotonic())
        self.waiting.clear()


def _connect_cause(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "connect timeout"
    return f"connect error: {type(exc).__name__}"


# ------------------------------------------------------------------ one share's run


class _Prepared:
    """A step ready to send: its request bytes (but the request number), its pool, its
    checks."""

    def __init__(self, key: str, step: Step, plan: LoadPlan, pools: dict[str, _Pool]) -> None:
        unsafe = request_problems(step)  # the file's validation refuses these; never send them
        if unsafe:
            raise ValueError(f"step {step.label!r} cannot be sent: {'; '.join(unsafe)}")
        base = urlsplit(plan.base_url)
        url = urlsplit(step.url) if not step.url.startswith("/") else None
        origin = url if url is not None else base
        scheme = origin.scheme or "http"
        host = origin.hostname or "127.0.0.1"
        port = origin.port or (443 if scheme == "https" else 80)
        target = (
            step.url if url is None else (url.path or "/") + (f"?{url.query}" if url.query else "")
        )
        if url is None and base.path and base.path != "/":
            target = base.path.rstrip("/") + target
        origin_key = f"{scheme}://{host}:{port}"
        if origin_key not in pools:
            pools[origin_key] = _Pool(
                asyncio.get_running_loop(), host, port, scheme == "https", plan.max_connections
            )
        self.pool = pools[origin_key]
        self.key = key
        self.endpoint = step.endpoint
        self.timeout = step.timeout.total_seconds()
        self.think = step.think_time.total_seconds()
        self.head_only = step.method == "HEAD"
        a = step.assertions
        self.statuses = frozenset(a.status)
        self.json_fields = a.json_fields
        self.max_latency_s = a.max_latency_ms / 1000 if a.max_latency_ms else None
        body = b""
        headers = {"Host": host if port in (80, 443) else f"{host}:{port}"}
        headers["User-Agent"] = "perfops-load"
        headers["Accept"] = "application/json"
        if step.body is not None:
            if isinstance(step.body, str):
                body = step.body.encode()
            else:
                body = json.dumps(step.body).encode()
                headers["Content-Type"] = "application/json"
        if body or step.method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        headers.update(step.headers)
        if plan.auth_header and plan.auth_value is not None:
            headers[plan.auth_header] = plan.auth_value.get_secret_value()
        head = f"{step.method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        self.head = head.encode("latin-1") + b"x-perfops-request: "
        self.tail = b"\r\n\r\n" + body

    def check(self, status: int, body: bytes, latency_s: float) -> str | None:
        """The cause of an error, or None when the response passes."""
        if self.statuses:
            if status not in self.statuses:
                return f"status {status}"
        elif not 200 <= status < 400:
            return f"status {status}"
        if self.json_fields:
            try:
                data = json.loads(body)
            except ValueError:
                return "assertion: body is not JSON"
            for path, want in self.json_fields.items():
                value: Any = data
                for part in path.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if value != want:
                    return f"assertion: {path}"
        if self.max_latency_s is not None and latency_s > self.max_latency_s:
            return "assertion: latency"
        return None


class _Recorder:
    """Counts and histograms of one share."""

    def __init__(self, test: LoadTest) -> None:
        self.seconds = math.ceil(test.seconds) + 1
        self.steps: dict[str, tuple[Counts, HdrHistogram]] = {}
        self.endpoints: dict[str, tuple[Counts, HdrHistogram]] = {}
        self.windows: dict[str, list[list[Any]]] = {}  # endpoint -> [requests, errors, hist]
        self.recent = deque[tuple[float, bool]]()  # (completion time, error) for the abort

    def _pair(self, table: dict[str, tuple[Counts, HdrHistogram]], key: str) -> Any:
        pair = table.get(key)
        if pair is None:
            pair = table[key] = (Counts(), new_histogram())
        return pair

    def sent(self, step: _Prepared, second: int) -> None:
        self._pair(self.steps, step.key)[0].requests += 1
        self._pair(self.endpoints, step.endpoint)[0].requests += 1
        window = self._window(step.endpoint, second)
        if window is not None:
            window[0] += 1

    def _window(self, endpoint: str, second: int) -> list[Any] | None:
        windows = self.windows.get(endpoint)
        if windows is None:
            windows = self.windows[endpoint] = [[0, 0, None] for _ in range(self.seconds)]
        return windows[second] if 0 <= second < len(windows) else None

    def answered(
        self, step: _Prepared, second: int, latency_s: float | None, cause: str | None, now: float
    ) -> None:
        us = max(1, int(latency_s * 1_000_000)) if latency_s is not None else None
        for counts, h in (
            self._pair(self.steps, step.key),
            self._pair(self.endpoints, step.endpoint),
        ):
            if us is not None:
                counts.responses += 1
                h.record_value(min(us, h.highest_trackable_value))
            if cause is not None:
                counts.errors[cause] = counts.errors.get(cause, 0) + 1
        window = self._window(step.endpoint, second)
        if window is not None:
            if us is not None:
                if window[2] is None:
                    window[2] = new_histogram(WINDOW_DIGITS)
                window[2].record_value(min(us, window[2].highest_trackable_value))
            if cause is not None:
                window[1] += 1
        self.recent.append((now, cause is not None))

    def error_rate(self, now: float, window_s: float, min_requests: int) -> float | None:
        recent = self.recent
        while recent and recent[0][0] < now - window_s:
            recent.popleft()
        if len(recent) < min_requests:
            return None
        return sum(1 for _, e in recent if e) / len(recent)

    def counts(self, table: dict[str, tuple[Counts, HdrHistogram]]) -> dict[str, Counts]:
        return {k: c.model_copy(update={"histogram": encode(h)}) for k, (c, h) in table.items()}

    def timeline(self) -> dict[str, list[Window]]:
        return {
            endpoint: [
                Window(requests=r, errors=e, histogram=encode(h) if h is not None else "")
                for r, e, h in windows
            ]
            for endpoint, windows in self.windows.items()
        }


class _Pacer:
    """A token bucket at `rate` tokens per second, holding at most `rate * PACE_BURST_S` (at
    least 1), starting empty. `take` reserves the next token and says when the send may leave:
    now, or when that token will have come (tokens may be owed, so waiters keep their order)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * PACE_BURST_S)
        self.tokens = 0.0
        self.last = now

    def take(self, now: float) -> float:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        self.tokens -= 1.0
        return now if self.tokens >= 0 else now + -self.tokens / self.rate


class _Run:
    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.test = plan.test
        self.loop = asyncio.get_running_loop()
        self.pools: dict[str, _Pool] = {}
        self.scenarios = [
            [_Prepared(f"{sc.name}/{s.label}", s, plan, self.pools) for s in sc.steps]
            for sc in self.test.scenarios
        ]
        self.rec = _Recorder(self.test)
        self.in_flight = 0
        self.sent = 0
        self.late = 0
        self.lag_max = 0.0
        self.stopping = False
        self.aborted: str | None = None
        self.idle = asyncio.Event()
        self.t0 = 0.0
        self.end = 0.0
        self.pacer: _Pacer | None = None  # the closed model's, from its start

    # one request: intended start, then the pool, then the answer
    def start_step(
        self, steps: list[_Prepared], index: int, number: int, intended: float, paced: bool = False
    ) -> None:
        if self.stopping:
            return
        if self.pacer is not None and not paced:  # the closed model: within the cap
            now = self.loop.time()
            at = self.pacer.take(now)
            if at > now:
                if at < self.end:  # else the cap leaves no room before the end: not sent
                    self.in_flight += 1  # held until its token comes
                    self.loop.call_at(at, self._paced_step, steps, index, number, at)
                self._settle()
                return
            intended = now
        step = steps[index]
        second = int(intended - self.t0)
        self.in_flight += 1
        data = step.head + str(number).encode() + step.tail
        open_model = self.test.pattern.open_model

        def use(conn: _Conn) -> None:
            now = time.monotonic()
            lag = now - intended
            if lag > LATE_S:
                self.late += 1
            if lag > self.lag_max:
                self.lag_max = lag
            if now <= self.end:
                self.sent += 1
            self.rec.sent(step, second)
            begin = intended if open_model else now
            conn.send(
                data,
                step.timeout,
                lambda status, body, t: self._done(steps, index, number, begin, status, body, t),
                lambda cause, t: self._failed(steps, index, number, begin, cause, t),
                step.head_only,
            )

        def no_connection(cause: str, t: float) -> None:
            if not cause.startswith("not sent") and not self.stopping:
                # attempted: a refused connect is the target's error, and a request sent
                if time.monotonic() <= self.end:
                    self.sent += 1
                self.rec.sent(step, second)
            self._failed(steps, index, number, intended, cause, t)

        step.pool.get(use, no_connection)

    def _done(
        self,
        steps: list[_Prepared],
        index: int,
        number: int,
        begin: float,
        status: int,
        body: bytes,
        now: float,
    ) -> None:
        step = steps[index]
        latency = now - begin
        cause = step.check(status, body, latency)
        self.rec.answered(step, int(begin - self.t0), latency, cause, now)
        self._next(steps, index, number, now)

    def _failed(
        self, steps: list[_Prepared], index: int, number: int, begin: float, cause: str, now: float
    ) -> None:
        step = steps[index]
        # a timeout's latency is at least the timeout: recorded, so it is not flattered away
        latency = now - begin if cause == "timeout" else None
        if cause.startswith("not sent") or (self.stopping and cause.startswith("connection")):
            # never sent, or cut off by perfops itself (an abort): not the target's error
            self.in_flight -= 1
            self._settle()
            return
        self.rec.answered(step, int(begin - self.t0), latency, cause, now)
        self._next(steps, index, number, now)

    def _next(self, steps: list[_Prepared], index: int, number: int, now: float) -> None:
        self.in_flight -= 1
        if index + 1 < len(steps) and not self.stopping:
            intended = now + steps[index].think
            if intended < self.end:
                self.in_flight += 1  # held until that step starts
                self.loop.call_at(intended, self._later_step, steps, index + 1, number, intended)
        elif not self.test.pattern.open_model and not self.stopping:
            self._vu_iteration_done(now + steps[index].think)
        self._settle()

    def _later_step(self, steps: list[_Prepared], index: int, number: int, at: float) -> None:
        self.in_flight -= 1
        self.start_step(steps, index, number, at)
        self._settle()

    def _paced_step(self, steps: list[_Prepared], index: int, number: int, at: float) -> None:
        self.in_flight -= 1
        self.start_step(steps, index, number, at, paced=True)
        self._settle()

    def _settle(self) -> None:
        if self.in_flight <= 0 and self.stopping:
            self.idle.set()

    # the open model
    async def dispatch_open(self) -> int:
        shape = Shape.of(self.test)
        times = arrival_times(shape, self.plan.share, self.plan.shares)
        weights = [sc.weight for sc in self.test.scenarios]
        order = scenario_order(weights, len(times) * self.plan.shares)[
            self.plan.share :: self.plan.shares
        ]
        absolute = times + self.t0
        n = len(absolute)
        i = 0
        loop = self.loop
        while i < n and not self.stopping:
            now = loop.time()
            while i < n and absolute[i] <= now:
                self.start_step(
                    self.scenarios[order[i]],
                    0,
                    i * self.plan.shares + self.plan.share,
                    float(absolute[i]),
                )
                i += 1
            if i < n:  # at least DISPATCH_MIN_S: at high rates one wake-up sends a batch
                wait = min(max(absolute[i] - loop.time(), DISPATCH_MIN_S), DISPATCH_SLICE_S)
                await asyncio.sleep(wait)
        return n

    # the closed model
    async def dispatch_closed(self) -> int:
        shape = Shape.of(self.test)
        self.vu_target = 0
        self.vus = 0
        self.iteration = 0
        weights = [sc.weight for sc in self.test.scenarios]
        self.order = scenario_order(weights, 10_000)
        self.pacer = _Pacer(self.plan.max_rps, self.loop.time())
        while not self.stopping and self.loop.time() < self.end:
            self.vu_target = share_users(
                vus_at(shape, self.loop.time() - self.t0), self.plan.share, self.plan.shares
            )
            while self.vus < self.vu_target:
                self.vus += 1
                self._vu_iteration_done(self.loop.time())
            await asyncio.sleep(0.05)
        return 0

    def _vu_iteration_done(self, at: float) -> None:
        if self.stopping or at >= self.end:
            return
        if self.vus > self.vu_target:  # ramping down: this user stops
            self.vus -= 1
            return
        steps = self.scenarios[self.order[self.iteration % len(self.order)]]
        number = self.iteration
        self.iteration += 1
        self.in_flight += 1
        self.loop.call_at(max(at, self.loop.time()), self._vu_start, steps, number)

    def _vu_start(self, steps: list[_Prepared], number: int) -> None:
        self.in_flight -= 1
        self.start_step(steps, 0, number, self.loop.time())

    async def monitor(self) -> None:
        abort = self.test.abort
        while not self.stopping:
            await asyncio.sleep(MONITOR_S)
            rate = self.rec.error_rate(
                time.monotonic(), abort.window.total_seconds(), abort.min_requests
            )
            if rate is not None and rate > abort.max_error_rate:
                self.aborted = (
                    f"aborted at {time.monotonic() - self.t0:.1f} s: error rate {rate:.0%} over "
                    f"the last {abort.window.total_seconds():g} s passed the limit "
                    f"{abort.max_error_rate:.0%}"
                )
                self.stop()

    def stop(self) -> None:
        self.stopping = True
        for pool in self.pools.values():
            pool.close()
        self._settle()

    def warm_connections(self) -> int:
        """Connections to open per origin before the start: enough for the peak rate at
        WARM_LATENCY_S per answer (open model) or one per virtual user (closed)."""
        p = self.test.pattern
        if p.open_model:
            wanted = math.ceil(p.level / self.plan.shares * WARM_LATENCY_S) + 4
        else:
            wanted = math.ceil(p.level / self.plan.shares)
        return min(wanted, self.plan.max_connections)

    async def run(self) -> ShareResult:
        warm = self.warm_connections()
        await asyncio.gather(*(pool.warm(warm) for pool in self.pools.values()))
        started_at = datetime.now(UTC)
        delay = self.plan.start_delay_s
        late = 0.0
        if self.plan.start_at_unix is not None:  # shares of one test start together
            now = time.time()
            delay = max(0.0, self.plan.start_at_unix - now)
            late = max(0.0, now - self.plan.start_at_unix)  # reported: the parent judges it
            started_at = datetime.fromtimestamp(max(self.plan.start_at_unix, now), UTC)
        self.t0 = self.loop.time() + delay
        self.end = self.t0 + self.test.seconds
        monitor = self.loop.create_task(self.monitor())
        await asyncio.sleep(max(0.0, self.t0 - self.loop.time()))
        open_model = self.test.pattern.open_model
        asked = await (self.dispatch_open() if open_model else self.dispatch_closed())
        while not self.stopping and self.loop.time() < self.end:
            await asyncio.sleep(min(0.05, max(0.0, self.end - self.loop.time())))
        if not self.stopping:  # drain: answers of requests still out, up to their timeout
            longest = max(s.timeout for steps in self.scenarios for s in steps)
            deadline = self.loop.time() + longest + DRAIN_GRACE_S
            while self.in_flight > 0 and self.loop.time() < deadline and not self.stopping:
                await asyncio.sleep(0.01)
        self.stopping = True
        for pool in self.pools.values():
            pool.close()
        monitor.cancel()
        await asyncio.sleep(0)
        return ShareResult(
            share=self.plan.share,
            shares=self.plan.shares,
            model="open" if open_model else "closed",
            started_at=started_at,
            started_monotonic=self.t0,
            start_late_s=round(late, 3),
            base_url=self.plan.base_url,
            test_hash=definition_hash(self.test),
            duration_s=self.test.seconds,
            seconds=round(self.loop.time() - self.t0, 3),
            asked=asked,
            sent=self.sent
            if open_model
            else sum(c.requests for c, _ in self.rec.endpoints.values()),
            late_sends=self.late,
            send_lag_max_ms=round(self.lag_max * 1000, 3),
            steps=self.rec.counts(self.rec.steps),
            endpoints=self.rec.counts(self.rec.endpoints),
            timeline=self.rec.timeline(),
            aborted=self.aborted,
        )


def run_share(plan: LoadPlan) -> ShareResult:
    """Run one share in this process and return what it measured (an event loop of its own:
    in a new thread when this one already runs one)."""

    async def go() -> ShareResult:
        return await _Run(plan).run()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    box: dict[str, Any] = {}

    def in_thread() -> None:
        try:
            box["result"] = asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=in_thread, name="perfops-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def plan_json(plan: LoadPlan) -> str:
    """The plan as the child process reads it (the secret revealed, for stdin only)."""
    data = plan.model_dump(mode="json", by_alias=True)
    data["auth_value"] = plan.auth_value.get_secret_value() if plan.auth_value else None
    return json.dumps(data)


def _main() -> int:
    plan = LoadPlan.model_validate_json(sys.stdin.read())
    gc.freeze()  # what the imports made stays out of collections
    gc.disable()  # no collector pauses while sending: this process ends after one share
    result = run_share(plan)
    sys.stdout.write(result.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
