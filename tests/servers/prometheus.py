"""A real Prometheus 2.42 (Debian's /usr/bin/prometheus) with back-filled test data: the tests use
perfops' own implementation (demo/embedded_prometheus.py, whose docstring lists the pitfalls)."""

from demo.embedded_prometheus import MetricSeries, PrometheusServer, Sample, openmetrics_text

__all__ = ["MetricSeries", "PrometheusServer", "Sample", "openmetrics_text"]
