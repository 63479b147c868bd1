"""A real 3-master Redis Cluster on 127.0.0.1, from the Debian `redis-server`: three
`cluster-enabled yes` nodes on free ports in a temporary folder, joined with
`redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, stopped (by pid) and
removed at the end. Starts in about a second. Used by the tests and `benchmarks.caches`.

Pitfalls found: a node's port must be <= 55535 (its bus is port + 10000); the nodes
need their own `dir` (each writes `nodes.conf` there); `--cluster
create` returns before every node agrees the cluster is ok, so `start()` waits for
`cluster_state:ok` on all three; persistence is off (`save ""`, `appendonly no`).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def start_private_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A private redis-server on `port` that keeps its keys in `folder` across a restart (an
    RDB written on SHUTDOWN SAVE, none on its own), once it answers PING."""
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port).ping()
            return server
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.01)


def restart_private_redis(servers: list[subprocess.Popen[bytes]], port: int, folder: Path) -> None:
    """Restart the private redis-server `servers[-1]` keeping its keys (SHUTDOWN SAVE, then
    `start_private_redis` again); the new process is appended to `servers`, so a test's
    cleanup stops whichever runs."""
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(port=port).shutdown(save=True)
    servers[-1].wait(timeout=20)
    servers.append(start_private_redis(port, folder))


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too: Redis refuses a port over 55535
    (the bus would overflow), so the usual ephemeral free port (often 56000+) will not do."""
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if port not in taken and _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) for a Redis Cluster node")


def _cluster_state(port: int) -> str:
    info: Any = redis.Redis(port=port).cluster("info")
    return str(info["cluster_state"])


class RedisCluster:
    """`with RedisCluster() as cluster: cluster.url` -> redis://127.0.0.1:PORT/0 (a seed node)."""

    def __init__(
        self, masters: int = 3, directory: Path | None = None, prefix: list[str] | None = None
    ) -> None:
        self.masters = masters
        self.prefix = prefix or []  # e.g. ["nice", "-n", "-10"] (benchmarks.caches)
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="perfops-redis-cluster-"))
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisCluster:
        for i in range(self.masters):
            port = cluster_port(self.ports)
            node_dir = self.directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.ports.append(port)
            self._procs.append(
                subprocess.Popen(
                    [
                        *self.prefix,
                        REDIS_SERVER,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--dir",
                        str(node_dir),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        str(node_dir / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping(), f"node {port} answers")
        subprocess.run(
            [REDIS_CLI, "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in self.ports]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            self._wait(
                lambda p=port: _cluster_state(p) == "ok",
                f"node {port} sees cluster_state ok",
            )
        return self

    def _wait(self, check: object, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Redis Cluster did not start: {what} timed out")
            time.sleep(0.05)

    def flush(self) -> None:
        for port in self.ports:
            redis.Redis(port=port).flushall()

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
