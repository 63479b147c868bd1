"""The latency-over-time chart of a load test run as PNG bytes (matplotlib `Figure`, Agg, no
pyplot): p50, p95, p99 and max per second (by intended start), and the requests per second
under them. The caller writes it where it belongs."""

from __future__ import annotations

import io

from decisions.load_report import LoadTestReport


def latency_chart(report: LoadTestReport) -> bytes:
    from matplotlib.figure import Figure  # on first use: it costs every command's start

    points = report.timeline
    seconds = [p.second for p in points]
    fig = Figure(figsize=(10, 5))
    ax, rate = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for field, label in (
        ("max_ms", "max"),
        ("p99_ms", "p99"),
        ("p95_ms", "p95"),
        ("p50_ms", "p50"),
    ):
        values = [
            getattr(p, field) if getattr(p, field) is not None else float("nan") for p in points
        ]
        ax.plot(seconds, values, lw=1, label=label)
    ax.set_ylabel("latency from intended start (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left")
    ax.set_title(
        f"{report.test}: latency per second ({report.model} model, "
        f"{report.achieved_rps:,.0f} of {report.asked_rps:,.0f} rps asked)"
    )
    rate.bar(seconds, [p.requests for p in points], width=1.0, label="requests")
    rate.bar(seconds, [p.errors for p in points], width=1.0, color="tab:red", label="errors")
    rate.set_ylabel("per second")
    rate.set_xlabel("seconds since the start")
    rate.legend(loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
