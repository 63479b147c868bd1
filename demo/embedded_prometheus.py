"""A private Prometheus back-filled with given series: the one implementation behind the demo's
weekly report (`demo.sample_metrics.demo_prometheus`), the SLA demo and benchmark, and the test
suite.

Needs Debian's `prometheus` package (2.42: `/usr/bin/prometheus` and `promtool`; scripts/setup.sh
installs it). ``PrometheusServer.start()`` writes the series as OpenMetrics text, turns it into
TSDB blocks with ``promtool tsdb create-blocks-from openmetrics`` *before* Prometheus starts (a
running Prometheus only picks up new blocks at its next reload/compaction, ~30 s-1 min later),
then starts Prometheus on 127.0.0.1 with no scrape targets and waits for ``/-/ready``. The blocks
are loaded when the TSDB opens, so ``/api/v1/query_range`` sees the data as soon as the server is
ready.

Measured on the 2-core dev machine: 14 days of 1-minute data for 5 series (100,800 samples)
starts in ~1.0-1.3 s in total (render ~0.1 s, promtool ~0.7-0.9 s, Prometheus to ready ~0.2 s).

Pitfalls:
- OpenMetrics counters: the family is named without ``_total`` (``# TYPE http_requests counter``)
  and the samples carry the suffix (``http_requests_total{...}``). promtool 2.42 does not enforce
  this: it stores whatever sample name is written (``# TYPE x counter`` + ``x 1`` gives a series
  ``x``). :func:`openmetrics_text` accepts either spelling of a counter's name and always writes
  ``<family>_total``, which is the name to use in PromQL (``MetricSeries.sample_name``).
- Timestamps are seconds (floats allowed) in OpenMetrics; Prometheus keeps milliseconds exactly.
- A range query may return at most 11,000 points per series: 14 days needs ``step >= 110s``.
- Instant lookups use ``--query.lookback-delta`` (5 m), and in Prometheus 2.x the window includes
  its left edge: a range query with ``step=300`` returns the last sample once more at
  ``last + 300``. Data ending ~1 h ago is invisible to an instant query at "now" (pass
  ``lookback_delta="2h"`` if a test needs that) but fine for range queries or ``x[1h]`` selectors.
- ``--max-block-duration`` is a hidden flag of ``promtool tsdb create-blocks-from`` in 2.42; the
  default (2 h) would write 168 blocks for 14 days. promtool rounds 24h down to its 18 h block
  range, so 14 days become ~20 blocks.
- Default retention is 15 d, counted back from the newest block: we pass
  ``--storage.tsdb.retention.time=3650d`` so old back-filled blocks are never deleted.
- Prometheus has no telemetry/update check to disable; the config has no scrape targets, rules or
  alerting, and the lifecycle/admin APIs stay disabled (their defaults). About a minute after
  start its compactor merges the back-filled blocks in the background (harmless).
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import httpx

from demo.local_server import LocalServer, free_port
from perfops.errors import MissingPrerequisite

if TYPE_CHECKING:
    pass

Sample = tuple[float, float]
"""(unix seconds, value)."""

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class MetricSeries:
    """One time series. ``name`` may be given with or without ``_total`` for counters."""

    name: str
    type: Literal["gauge", "counter"]
    labels: dict[str, str]
    samples: list[Sample]
    help: str = ""

    @property
    def family(self) -> str:
        """OpenMetrics metric family name (``_total`` stripped for counters)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name.removesuffix("_total")
        return self.name

    @property
    def sample_name(self) -> str:
        """The name of the samples, i.e. what PromQL queries select."""
        return f"{self.family}_total" if self.type == "counter" else self.family


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _series_lines(series: MetricSeries) -> Iterable[str]:
    for label in series.labels:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"invalid label name {label!r} in {series.name}")
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(series.labels.items()))
    prefix = f"{series.sample_name}{{{labels}}}" if labels else series.sample_name
    samples = sorted(series.samples, key=lambda s: s[0])
    for (t1, _), (t2, _) in itertools.pairwise(samples):
        if round(t1 * 1000) == round(t2 * 1000):
            raise ValueError(f"duplicate timestamp {t1} in {prefix}")
    for ts, value in samples:
        yield f"{prefix} {_number(value)} {_number(round(ts, 3))}"


def openmetrics_text(series: list[MetricSeries]) -> str:
    """Render ``series`` as OpenMetrics text accepted by ``promtool tsdb create-blocks-from``.

    Series are grouped into metric families (one ``# TYPE``/``# HELP`` block each, in order of
    first appearance); samples are sorted by time within each series; the text ends in ``# EOF``.
    """
    families: dict[str, list[MetricSeries]] = {}
    for s in series:
        if not _METRIC_NAME.match(s.name):
            raise ValueError(f"invalid metric name {s.name!r}")
        group = families.setdefault(s.family, [])
        if group and (group[0].type, group[0].help) != (s.type, s.help):
            raise ValueError(f"metric family {s.family!r} declared with different type/help")
        if any(g.labels == s.labels for g in group):
            raise ValueError(f"duplicate series {s.family}{s.labels}")
        group.append(s)

    lines: list[str] = []
    for family, members in families.items():
        lines.append(f"# TYPE {family} {members[0].type}")
        if members[0].help:
            lines.append(f"# HELP {family} {_escape(members[0].help)}")
        for s in members:
            lines.extend(_series_lines(s))
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def merge_series(*segments: list[MetricSeries]) -> list[MetricSeries]:
    """One series per name and labels, the samples of every segment joined (e.g. two weeks
    generated separately); the first segment's type and help win."""
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], MetricSeries] = {}
    for segment in segments:
        for s in segment:
            key = (s.name, tuple(sorted(s.labels.items())))
            old = merged.get(key)
            samples = old.samples + s.samples if old else list(s.samples)
            merged[key] = MetricSeries(s.name, (old or s).type, s.labels, samples, (old or s).help)
    return list(merged.values())


class PrometheusServer(LocalServer):
    """Prometheus on 127.0.0.1:<free port> whose TSDB is back-filled with ``series``."""

    def __init__(
        self,
        workdir: Path,
        series: list[MetricSeries],
        scrape_interval: str = "15s",
        *,
        lookback_delta: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.series = series
        self.scrape_interval = scrape_interval
        self.lookback_delta = lookback_delta
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>, while running."""
        if self._proc is None:
            raise RuntimeError("PrometheusServer is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def _backfill(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        if not any(s.samples for s in self.series):
            return
        om_file = self.workdir / "backfill.om"
        om_file.write_text(openmetrics_text(self.series), encoding="utf-8")
        cmd = [
            "promtool", "tsdb", "create-blocks-from", "--quiet", "--max-block-duration=24h",
            "openmetrics", str(om_file), str(self.data_dir),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"promtool back-fill failed:\n{result.stdout}\n{result.stderr}")

    def _write_config(self) -> Path:
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.scrape_interval}\n"
            "scrape_configs: []\n",
            encoding="utf-8",
        )
        return config

    def _log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> PrometheusServer:
        if self._proc is not None:
            raise RuntimeError("PrometheusServer already started")
        missing = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
        if missing:
            raise MissingPrerequisite(
                f"{' and '.join(missing)} not found: apt-get install --no-install-recommends "
                "prometheus (scripts/setup.sh does)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._backfill()
        config = self._write_config()
        self.port = free_port()
        cmd = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=3650d",
        ]
        if self.lookback_delta:
            cmd.append(f"--query.lookback-delta={self.lookback_delta}")
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"prometheus exited with {self._proc.returncode}:\n{self._log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/-/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(
            f"prometheus not ready after {self.startup_timeout}s:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
