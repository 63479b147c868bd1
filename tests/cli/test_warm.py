"""The warm command process (cli/warm.py): a command it runs prints, exits and reports to Prefect
exactly as a fresh process does; it is used only by commands with the same settings, never
after the code it loaded changed, and `perfops server stop` stops it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli import warm, warm_registry
from tests.command import PERFOPS, ROOT, perfops_env, run_perfops


@pytest.fixture()
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime directory (short: a socket path has at most 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="pw", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    try:
        yield base
    finally:
        for info in base.glob("perfops-*/*.sock.json"):
            pid = json.loads(info.read_text())["pid"]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)


def _infos(runtime: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in runtime.glob("perfops-*/*.sock.json")]


def _wait_ready(runtime: Path, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = _infos(runtime)
        if infos:
            return infos[0]
        time.sleep(0.25)
    logs = "\n".join(p.read_text() for p in runtime.glob("perfops-*/*.log"))
    raise AssertionError(f"no warm process became ready in {timeout} s; its log:\n{logs}")


def _runs(api_url: str) -> int:
    """Completed refresh_stale_statistics runs in the Prefect server."""
    answer = httpx.post(
        f"{api_url}/flow_runs/count",
        json={
            "flows": {"name": {"any_": ["refresh_stale_statistics"]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        },
        timeout=30,
    )
    answer.raise_for_status()
    return int(answer.json())


def test_the_key_follows_prefect_and_perfops_settings_and_the_directory(tmp_path: Path) -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "PERFOPS_DSN": "dbname=a", "TERM": "x"}
    key = warm_registry.key_of(env, str(tmp_path))
    assert warm_registry.key_of({**env, "TERM": "dumb"}, str(tmp_path)) == key  # not a setting
    assert warm_registry.key_of({**env, warm_registry.CHILD_MARK: "1"}, str(tmp_path)) == key
    assert warm_registry.key_of({**env, "PERFOPS_DSN": "dbname=b"}, str(tmp_path)) != key
    assert warm_registry.key_of({**env, "PREFECT_LOGGING_LEVEL": "DEBUG"}, str(tmp_path)) != key
    assert warm_registry.key_of(env, str(tmp_path / "elsewhere")) != key
    (tmp_path / "prefect.toml").write_text("[logging]\nlevel = 'DEBUG'\n")
    assert warm_registry.key_of(env, str(tmp_path)) != key  # Prefect reads it from the directory


def test_a_changed_source_file_is_named(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    files = {str(source): source.stat().st_mtime_ns}
    assert warm.changed(files) is None
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert warm.changed(files) == str(source)
    source.unlink()
    assert warm.changed(files) == str(source)


def test_a_runtime_directory_others_can_enter_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert warm_registry.runtime_dir() == str(tmp_path / f"perfops-{os.getuid()}")
    os.chmod(tmp_path / f"perfops-{os.getuid()}", 0o755)  # noqa: S103 (the case refused)
    assert warm_registry.runtime_dir() is None


def test_a_warm_process_runs_commands_as_a_fresh_process_would(
    runtime: Path, pg_dsn: str, prefect_api_url: str, tmp_path: Path
) -> None:
    env = {
        "PERFOPS_WARM": "on",
        "XDG_RUNTIME_DIR": str(runtime),
        "PREFECT_API_URL": prefect_api_url,
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path),
    }
    args = ("stats", "refresh", "--dry-run", "--json")
    runs = _runs(prefect_api_url)
    cold = run_perfops(*args, env=env)
    assert cold.returncode == 0, cold.stderr
    info = _wait_ready(runtime)  # left behind by the cold command
    assert info["served"] == 0 and info["cwd"] == str(Path(__file__).resolve().parents[2])

    hot = run_perfops(*args, env=env)
    assert hot.returncode == 0, hot.stderr
    assert _infos(runtime)[0]["served"] == 1  # this one ran in the warm process
    report, again = json.loads(cold.stdout), json.loads(hot.stdout)
    assert again["target"] == report["target"] and again["dry_run"] is True
    assert {t["table"] for t in again["tables"]} == {t["table"] for t in report["tables"]}
    assert _runs(prefect_api_url) == runs + 2  # each a flow run in the same Prefect server

    # failures: the same one line and exit code as a fresh process
    bad_dsn = {**env, "PERFOPS_DSN": "host=127.0.0.1 port=1 dbname=nowhere"}
    usage = run_perfops("stats", "refresh", "--threshold", "5", env=env)
    assert usage.returncode == 2 and "--threshold" in usage.stderr
    assert _infos(runtime)[0]["served"] == 2
    cold_usage = run_perfops("stats", "refresh", "--threshold", "5", env={"PERFOPS_WARM": "off"})
    assert usage.stderr == cold_usage.stderr

    # Ctrl-C reaches the command in the warm process: it stops, exit 130 as a fresh one
    tune = subprocess.Popen(
        [*PERFOPS, "scaling", "tune", "--group", "web", "--no-store"],
        cwd=ROOT,
        env=perfops_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while _infos(runtime)[0]["served"] != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # into the back-test (about 10 s of CPU)
    children = Path(f"/proc/{info['pid']}/task/{info['pid']}/children").read_text().split()
    assert len(children) == 1
    tune.send_signal(signal.SIGINT)
    assert tune.wait(timeout=30) == 130, tune.communicate()[1]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{children[0]}").exists()

    # other settings, another key: this warm process does not take it
    other = run_perfops("stats", "refresh", "--dry-run", env=bad_dsn)
    assert other.returncode == 1 and "cannot connect to PostgreSQL" in other.stderr
    assert [i["served"] for i in _infos(runtime) if i["pid"] == info["pid"]] == [3]

    # `perfops server status` lists it, `perfops server stop` stops it (those of its directory)
    status = run_perfops("server", "status", "--json", env=env)
    assert info["pid"] in [w["pid"] for w in json.loads(status.stdout)["warm"]]
    stop = run_perfops("server", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
    assert f"warm command process (pid {info['pid']})" in stop.stdout
    deadline = time.monotonic() + 30
    while any(i["pid"] == info["pid"] for i in _infos(runtime)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(i["pid"] == info["pid"] for i in _infos(runtime))
