"""`perfops scaling` as a user runs it: backtest on a trace, history, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.cli.test_cli import _run
from tests.conftest import REDIS_TEST_URL


def _trace(path: Path) -> Path:
    index = pd.date_range("2024-01-01", periods=24 * 21, freq="1h")
    hour = index.hour.to_numpy()
    rng = np.random.default_rng(0)
    value = 100 + 80 * np.sin((hour - 12) / 24 * 2 * np.pi) + rng.normal(0, 5, len(index))
    pd.DataFrame({"timestamp": index, "value": value}).to_csv(path, index=False)
    return path


def test_backtest_json_compares_perfops_with_reactive_and_oracle(tmp_path: Path) -> None:
    chart = tmp_path / "bt.png"
    result = _run(
        "scaling",
        "backtest",
        "--trace",
        str(_trace(tmp_path / "t.csv")),
        "--delay",
        "1h",
        "--chart",
        str(chart),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {r["policy"]: r for r in report["rows"]}
    assert set(rows) == {"perfops", "threshold", "hpa@70%", "oracle"}
    assert rows["oracle"]["cost_x_oracle"] == 1.0 and rows["oracle"]["under_pct"] == 0.0
    assert rows["perfops"]["under_pct"] <= rows["hpa@70%"]["under_pct"]
    assert rows["perfops"]["wape_pct"] < 15
    # perfops tuned itself on the training part and says what it runs and why
    assert report["choice"] and report["reason"]
    assert chart.stat().st_size > 1000


def test_backtest_of_a_trace_too_short_to_tune_runs_the_base_policy_and_says_so(
    tmp_path: Path,
) -> None:
    short = tmp_path / "short.csv"
    pd.read_csv(_trace(tmp_path / "t.csv")).head(24 * 3).to_csv(short, index=False)  # 3 days
    result = _run("scaling", "backtest", "--trace", str(short), "--delay", "1h", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["choice"] is None
    assert report["reason"].startswith("not tuned (a back-test needs at least two days")
    assert "the base policy, forecast @ 70%" in report["reason"]
    assert {r["policy"] for r in report["rows"]} == {"perfops", "threshold", "hpa@70%", "oracle"}


def test_backtest_bad_trace_is_one_line(tmp_path: Path) -> None:
    missing = _run("scaling", "backtest", "--trace", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("when,load\n2024-01-01,1\n")
    wrong = _run("scaling", "backtest", "--trace", str(bad))
    assert wrong.returncode == 1 and "needs timestamp,value columns" in wrong.stderr


def test_backtest_bad_delay_is_bad_usage_naming_the_flag(tmp_path: Path) -> None:
    """`--delay xyz` used to exit 1 blaming the trace ("trace t.csv: unit abbreviation w/o a
    number")."""
    trace = str(_trace(tmp_path / "t.csv"))
    for delay in ("xyz", "-5min"):
        result = _run("scaling", "backtest", "--trace", trace, f"--delay={delay}")
        assert result.returncode == 2, result.stderr
        assert f"Invalid value for --delay: not a duration like 10min, 90s or 1h: '{delay}'" in (
            result.stderr
        )
        assert "trace" not in result.stderr.split("--delay")[1].split("(see")[0]


def test_history_of_an_unknown_group_and_redis_down() -> None:
    empty = _run(
        "scaling", "history", "--group", "never-decided", env={"PERFOPS_REDIS_URL": REDIS_TEST_URL}
    )
    assert empty.returncode == 0 and "no scaling decisions recorded" in empty.stdout
    down = _run("scaling", "history", env={"PERFOPS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 1 and "Redis at redis://127.0.0.1:1/0 failed" in down.stderr


def test_decide_refuses_current_with_aws_naming_the_flag() -> None:
    """`--current` with `--aws` was passed on and silently ignored (AWS's capacity used)."""
    result = _run(
        "scaling",
        "decide",
        "--group",
        "web",
        "--aws",
        "--endpoint-url",
        "http://127.0.0.1:1",
        "--current",
        "5",
        env={"PERFOPS_REDIS_URL": REDIS_TEST_URL},
    )
    assert result.returncode == 2, result.stderr
    assert "Invalid value for --current: --current is the capacity of a simulated group" in (
        result.stderr
    )
