"""A private Prometheus for the demo's weekly report: two weeks of synthetic API metrics
(perfops.sample_metrics) back-filled with `promtool` under `out/prometheus`, served on 127.0.0.1
for the time of the report and stopped afterwards. Needs Debian's `prometheus` package
(scripts/setup.sh installs it)."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from perfops.errors import MissingPrerequisite
from perfops.sample_metrics import (
    Series,
    SyntheticEndpoint,
    duration_series,
    endpoint_series,
    node_series,
)
from tasks.reporting import ReportWeek

STEP_S = 300
DEMO_BUCKETS = (0.01, 0.05, 0.25, 1.0)


def demo_series(week: ReportWeek) -> list[Series]:
    """The report week and the one before: the seed's three endpoints (execute over its target
    this week), a health check that lost a few hours, node CPU and memory, durations."""
    out: list[Series] = []
    gap = (week.start.timestamp() + 2.5 * 86400, week.start.timestamp() + 2.75 * 86400)
    for w, p95s, cpu in (
        (week.previous(), (0.070, 0.160, 0.380), 45),
        (week, (0.085, 0.240, 0.41), 58),
    ):
        start, end = w.start.timestamp() + STEP_S, w.end.timestamp() - STEP_S
        endpoints = [
            SyntheticEndpoint(
                "GET", "/api/v1/agents", p95s[0] * 0.45, p95s[0], p95s[0] * 1.7, 700, 0.0008, 0.35
            ),
            SyntheticEndpoint(
                "POST",
                "/api/v1/agents/execute",
                p95s[1] * 0.4,
                p95s[1],
                p95s[1] * 1.6,
                260,
                0.004,
                0.35,
            ),
            SyntheticEndpoint(
                "POST",
                "/api/v1/workflows/run",
                p95s[2] * 0.5,
                p95s[2],
                p95s[2] * 1.5,
                45,
                0.001,
                0.35,
            ),
            SyntheticEndpoint(
                "GET", "/healthz", 0.001, 0.003, 0.006, 2, 0.0, 0.0, gaps=[gap] if w is week else []
            ),
        ]
        for e in endpoints:
            out += endpoint_series(e, start, end, STEP_S, DEMO_BUCKETS)
        out += node_series(start, end, STEP_S, cpu, 18, 62, 8)
        out += duration_series(
            "agent_execution_duration_seconds", (1.4, 3.8, 6.5), 4, start, end, STEP_S
        )
        out += duration_series(
            "workflow_completion_duration_seconds", (11.0, 28.0, 50.0), 0.7, start, end, STEP_S
        )
    return out


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value))


def openmetrics(series: list[Series]) -> str:
    """OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`: one family per
    name (counters named `<family>_total`), samples in time order, `# EOF` last."""
    by_name: dict[str, list[Series]] = {}
    for s in series:
        by_name.setdefault(s.name, []).append(s)
    lines: list[str] = []
    for name, members in by_name.items():
        counter = name.endswith("_total")
        lines.append(
            f"# TYPE {name.removesuffix('_total') if counter else name} "
            f"{'counter' if counter else 'gauge'}"
        )
        merged: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for s in members:
            merged.setdefault(tuple(sorted(s.labels.items())), []).extend(s.samples)
        for labels, samples in merged.items():
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            prefix = f"{name}{{{text}}}" if text else name
            lines += [f"{prefix} {_number(v)} {t:.3f}" for t, v in sorted(samples)]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def demo_prometheus(workdir: Path, week: ReportWeek) -> Iterator[str]:
    """Back-fill and start a private Prometheus; yield its URL; stop it at the end."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        raise MissingPrerequisite(
            "the demo report needs Prometheus: apt-get install --no-install-recommends prometheus "
            "(scripts/setup.sh does)"
        )
    data = workdir / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    source = workdir / "demo.om"
    source.write_text(openmetrics(demo_series(week)), encoding="utf-8")
    subprocess.run(
        [
            promtool,
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
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n", encoding="utf-8")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=3650d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise MissingPrerequisite(
                        f"the demo Prometheus did not start; see {workdir / 'prometheus.log'}"
                    )
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
