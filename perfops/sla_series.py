"""Synthetic API metrics for the SLA demo, tests and benchmark: request counters by status
code and a latency histogram, one sample a minute, with known incidents in them; and a small
local Prometheus (Debian's `prometheus` + `promtool`) back-filled with them.

The traffic has a daily cycle (peak ~1.5x the trough); errors are 0.01% and the latency is
log-normal (median 80 ms, p95 ~180 ms) outside incidents. An `Incident` multiplies the latency
or sets the error ratio between two times. Everything is deterministic, so the benchmark knows
the exact minute each burn rate crosses its threshold.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

BUCKETS = [round(0.02 * i, 2) for i in range(1, 26)] + [0.75, 1.0, 2.5]  # seconds, + +Inf
BASE_RPS = 2000.0
BASE_ERROR_RATIO = 0.0001
MEDIAN_S, SIGMA = 0.08, 0.5


@dataclass(frozen=True)
class Incident:
    name: str
    start: datetime
    end: datetime
    error_ratio: float | None = None  # share of requests answered 5xx
    latency_factor: float = 1.0  # latency multiplied by this


@dataclass
class Series:
    name: str
    labels: dict[str, str]
    samples: list[tuple[float, float]] = field(default_factory=list)  # (unix s, counter value)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def rps_at(ts: float) -> float:
    day = (ts % 86400) / 86400
    return BASE_RPS * (1.0 + 0.25 * math.sin(2 * math.pi * (day - 0.25)))


def error_ratio_at(ts: float, incidents: list[Incident]) -> float:
    for inc in incidents:
        if inc.error_ratio is not None and inc.start.timestamp() <= ts < inc.end.timestamp():
            return inc.error_ratio
    return BASE_ERROR_RATIO


def latency_factor_at(ts: float, incidents: list[Incident]) -> float:
    factor = 1.0
    for inc in incidents:
        if inc.start.timestamp() <= ts < inc.end.timestamp():
            factor *= inc.latency_factor
    return factor


def api_series(
    start: datetime,
    end: datetime,
    incidents: list[Incident],
    service: str = "api",
    buckets: list[float] | None = None,
) -> list[Series]:
    """Counters `http_requests_total{service,code}`, `http_request_duration_seconds_bucket{le}`
    and `_count`, one sample a minute in [start, end]; the minute's events land at its end.
    Fewer `buckets` (seconds) back-fill faster; the default resolves p95 to about 10 ms."""
    ok = Series("http_requests_total", {"service": service, "code": "200"})
    bad = Series("http_requests_total", {"service": service, "code": "500"})
    count = Series("http_request_duration_seconds_count", {"service": service})
    bounds = buckets or BUCKETS
    histogram = [
        Series("http_request_duration_seconds_bucket", {"service": service, "le": f"{le:g}"})
        for le in bounds
    ] + [Series("http_request_duration_seconds_bucket", {"service": service, "le": "+Inf"})]
    totals = [0.0] * (3 + len(histogram))
    t = int(start.timestamp()) // 60 * 60
    stop = end.timestamp()
    while t <= stop:
        minute = t - 60
        n = rps_at(minute) * 60
        errors = n * error_ratio_at(minute, incidents)
        median = MEDIAN_S * latency_factor_at(minute, incidents)
        totals[0] += n - errors
        totals[1] += errors
        totals[2] += n
        for i, le in enumerate(bounds):
            totals[3 + i] += n * _phi(math.log(le / median) / SIGMA)
        totals[-1] += n
        for s, v in zip([ok, bad, count, *histogram], totals, strict=True):
            s.samples.append((float(t), round(v, 3)))
        t += 60
    return [ok, bad, count, *histogram]


def openmetrics(series: list[Series]) -> str:
    """OpenMetrics text for `promtool tsdb create-blocks-from openmetrics` (counters as
    untyped families so names stay exactly as given)."""
    lines: list[str] = []
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s.name, []).append(s)
    for name, members in families.items():
        lines.append(f"# TYPE {name} unknown")
        for s in members:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            lines.extend(f"{name}{{{labels}}} {v!r} {int(ts)}" for ts, v in s.samples)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPrometheus:
    """Prometheus on 127.0.0.1 back-filled with `series` (promtool before start)."""

    def __init__(self, workdir: Path, series: list[Series]) -> None:
        self.workdir = workdir
        self.series = series
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalPrometheus:
        for tool in ("prometheus", "promtool"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: run `make setup` (scripts/setup.sh)")
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        source = self.workdir / "series.om"
        source.write_text(openmetrics(self.series), encoding="utf-8")
        subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "--quiet",
                "--max-block-duration=24h",
                "openmetrics",
                str(source),
                str(data),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        config = self.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        self.port = _free_port()
        log = (self.workdir / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=3650d",
                "--query.lookback-delta=5m",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready; see {self.workdir}/prometheus.log")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def minutes(start: datetime, end: datetime) -> list[datetime]:
    """Every whole minute in [start, end]."""
    first = start.replace(second=0, microsecond=0)
    count = int((end - first).total_seconds() // 60) + 1
    return [first + timedelta(minutes=i) for i in range(count)]
