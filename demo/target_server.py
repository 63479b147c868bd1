"""A local HTTP target for load tests: a real HTTP/1.1 server on 127.0.0.1 (asyncio, keep-alive)
whose latency is known, so what a load generator reports can be checked against the truth.

- Latency: log-normal around `median_ms` (`sigma` 0 = constant), times `scale` (1.2 = a server
  20% slower at every percentile), drawn from a seeded generator.
- Stalls: every `stall_every_s` the whole server stops for `stall_s` (its event loop blocked, as
  in a stop-the-world pause): nothing is read or answered meanwhile.
- Errors: `error_rate` of the requests are answered 500.
- The log: for every request, its `x-perfops-request` number (the generator sends one), path,
  when the server read it and when it answered it (`time.monotonic()`, the same clock in every
  process on Linux), and the stall windows. `truth_latencies` turns it into the latency each
  request really had from its intended start.

Any path answers `{"status": "ok", "path": ...}` (JSON). Used by `perfops demo`, the
tests and `python -m benchmarks.load`; run alone with `python -m demo.target_server --port 8089`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HEADER_END = b"\r\n\r\n"
MAX_HEADER = 65_536


@dataclass(frozen=True)
class TargetBehaviour:
    """How the target answers."""

    median_ms: float = 20.0
    sigma: float = 0.0  # log-normal shape; 0 = every request takes median_ms
    scale: float = 1.0  # multiplies every latency (1.2 = 20% slower)
    stall_every_s: float | None = None
    stall_s: float = 0.0
    error_rate: float = 0.0
    seed: int = 1


@dataclass
class RequestLog:
    """What the server saw: per request (number, path, read at, answered at), and stalls."""

    numbers: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "numbers": self.numbers,
                    "paths": self.paths,
                    "arrived": self.arrived,
                    "answered": self.answered,
                    "stalls": self.stalls,
                }
            )
        )

    @classmethod
    def read(cls, path: Path) -> RequestLog:
        data = json.loads(path.read_text())
        return cls(
            data["numbers"],
            data["paths"],
            data["arrived"],
            data["answered"],
            [tuple(s) for s in data["stalls"]],
        )


class _Server:
    def __init__(self, behaviour: TargetBehaviour, log: RequestLog | None) -> None:
        self.behaviour = behaviour
        self.log = log
        self.random = random.Random(behaviour.seed)
        self.responses: dict[tuple[bytes, bool, bool], bytes] = {}

    def response(self, path: bytes, error: bool, close: bool) -> bytes:
        """The response bytes for a path (made once per path and outcome)."""
        key = (path, error, close)
        cached = self.responses.get(key)
        if cached is None:
            status = b"500 Internal Server Error" if error else b"200 OK"
            body = json.dumps(
                {"status": "error" if error else "ok", "path": path.decode("latin-1")}
            ).encode()
            cached = (
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n"
                + body
            )
            if len(self.responses) < 1_000:
                self.responses[key] = cached
        return cached

    def latency_s(self) -> float:
        b = self.behaviour
        base = b.median_ms / 1000.0
        if b.sigma > 0:
            base *= self.random.lognormvariate(0.0, b.sigma)
        return base * b.scale


class _Connection(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(HEADER_END)
            if end < 0:
                if len(self.buffer) > MAX_HEADER and self.transport:
                    self.transport.close()
                return
            head = self.buffer[:end].lower()
            first = head.find(b" ")
            path = self.buffer[first + 1 : self.buffer.find(b" ", first + 1)]
            length = _header_int(head, b"\r\ncontent-length:", 0)
            number = _header_int(head, b"\r\nx-perfops-request:", -1)
            close = b"\r\nconnection: close" in head
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            arrived = time.monotonic()
            self.loop.call_later(
                self.server.latency_s(), self._answer, path, number, arrived, close
            )

    def _answer(self, path: bytes, number: int, arrived: float, close: bool) -> None:
        server = self.server
        error = server.behaviour.error_rate > 0 and server.random.random() < (
            server.behaviour.error_rate
        )
        answered = time.monotonic()
        if server.log is not None:
            server.log.numbers.append(number)
            server.log.paths.append(path.decode("latin-1"))
            server.log.arrived.append(arrived)
            server.log.answered.append(answered)
        if self.closed or self.transport is None:
            return
        self.transport.write(server.response(path, error, close))
        if close:
            self.transport.close()


def _header_int(head: bytes, name: bytes, default: int) -> int:
    at = head.find(name)
    if at < 0:
        return default
    stop = head.find(b"\r\n", at + 2)
    try:
        return int(head[at + len(name) : stop if stop >= 0 else len(head)].strip())
    except ValueError:
        return default


def _stall_timer(loop: asyncio.AbstractEventLoop, server: _Server) -> None:
    b = server.behaviour
    if not b.stall_every_s or b.stall_s <= 0:
        return

    def stall() -> None:
        started = time.monotonic()
        time.sleep(b.stall_s)  # the whole server stops: nothing read, nothing answered
        if server.log is not None:
            server.log.stalls.append((started, time.monotonic()))
        loop.call_later(max(0.0, b.stall_every_s - b.stall_s), stall)  # type: ignore[operator]

    loop.call_later(b.stall_every_s, stall)


class TargetServer:
    """The target in a background thread of this process: `with TargetServer(...) as t:
    t.url`. Stalls then block only this server's thread."""

    def __init__(
        self,
        behaviour: TargetBehaviour | None = None,
        *,
        port: int = 0,
        keep_log: bool = True,
    ) -> None:
        self.behaviour = behaviour or TargetBehaviour()
        self.log = RequestLog() if keep_log else None
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TargetServer:
        self._thread = threading.Thread(target=self._run, name="perfops-target", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the target server did not start within 10 s")
        return self

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        state = _Server(self.behaviour, self.log)
        srv = await self._loop.create_server(
            lambda: _Connection(state), "127.0.0.1", self._port, backlog=4096
        )
        self.port = srv.sockets[0].getsockname()[1]
        _stall_timer(self._loop, state)
        self._started.set()
        await self._stop.wait()
        srv.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> TargetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve_forever(behaviour: TargetBehaviour, port: int, log_path: Path | None) -> None:
    loop = asyncio.get_running_loop()
    log = RequestLog() if log_path else None
    state = _Server(behaviour, log)
    srv = await loop.create_server(lambda: _Connection(state), "127.0.0.1", port, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)  # the port, for whoever started us
    _stall_timer(loop, state)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    srv.close()
    if log is not None and log_path is not None:
        log.write(log_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8089, help="0 = a free port (printed)")
    parser.add_argument("--median-ms", type=float, default=20.0)
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--stall-every-s", type=float, default=None)
    parser.add_argument("--stall-s", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, default=None, help="write the request log at exit")
    args = parser.parse_args(argv)
    behaviour = TargetBehaviour(
        median_ms=args.median_ms,
        sigma=args.sigma,
        scale=args.scale,
        stall_every_s=args.stall_every_s,
        stall_s=args.stall_s,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    asyncio.run(_serve_forever(behaviour, args.port, args.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
