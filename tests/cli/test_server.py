"""The local Prefect server the CLI keeps (`perfops server ...`, demo.prefect_server): one server
for concurrent first commands, reused, visible, stopped; stale pid files, a taken port and a bad
DSN reported before anything starts. Every server is started on a free port under a tmp out
folder and stopped by the test."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import prefect
import pytest

from demo.prefect_server import STATE_FILE, LocalPrefectServer, configured_api_url
from tests.command import run_perfops
from tests.servers import free_port


def _env(out: Path, port: int) -> dict[str, str]:
    return {
        "PERFOPS_LOCAL_SERVER": "on",
        "PERFOPS_OUT_DIR": str(out),
        "PERFOPS_LOCAL_SERVER_PORT": str(port),
    }


def _errors(stderr: str) -> list[str]:
    """stderr without the progress lines."""
    return [line for line in stderr.splitlines() if not line.endswith("...")]


class _NotPrefect(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def other_program() -> Iterator[int]:
    """An HTTP server that is not Prefect on a free port; yields the port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NotPrefect)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_concurrent_first_commands_start_one_server_that_later_ones_reuse(
    tmp_path: Path, pg_dsn: str
) -> None:
    out, port = tmp_path / "out", free_port()
    env = _env(out, port)
    refresh = ("stats", "refresh", "--dry-run", "--dsn", pg_dsn, "--json")
    try:
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: run_perfops(*refresh, env=env, timeout=240), range(2)))
        assert [r.returncode for r in both] == [0, 0], [r.stderr for r in both]
        started = [r.stderr for r in both if "started the local Prefect server" in r.stderr]
        assert len(started) == 1, [r.stderr for r in both]  # one server, its UI printed once
        assert f"http://127.0.0.1:{port}" in started[0]

        status = run_perfops("server", "status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        found = json.loads(status.stdout)
        assert found["state"] == "running" and found["healthy"] is True
        assert found["url"] == f"http://127.0.0.1:{port}"
        assert found["database"] == str(out.resolve() / "prefect" / "prefect.db")
        assert found["version"] == prefect.__version__
        pid = found["pid"]

        runs = httpx.post(f"http://127.0.0.1:{port}/api/flow_runs/count", json={}, timeout=10)
        assert runs.json() == 2  # both commands' runs are in the local server (and its UI)

        start = run_perfops("server", "start", env=env)
        assert start.returncode == 0 and f"already running (pid {pid})" in start.stdout

        stop = run_perfops("server", "stop", env=env)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.strip() == f"stopped the local Prefect server (pid {pid})"
        assert not (out / "prefect" / STATE_FILE).exists()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
        status = run_perfops("server", "status", env=env)
        assert status.returncode == 1 and "local Prefect server: not running" in status.stdout
    finally:
        LocalPrefectServer(out, port).stop()


def test_a_stale_pid_file_is_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    home, port = tmp_path / "prefect", free_port()
    home.mkdir()
    record = {
        "pid": gone.pid,
        "port": port,
        "home": str(home),
        "database": str(home / "prefect.db"),
        "log": str(home / "perfops-server.log"),
        "prefect_version": prefect.__version__,
        "started_at": "2026-12-06T00:00:00+00:00",
    }
    (home / STATE_FILE).write_text(json.dumps(record))
    env = _env(tmp_path, port)

    stop = run_perfops("server", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
    assert f"(pid {gone.pid}) had already exited; removed its pid file" in stop.stdout
    assert not (home / STATE_FILE).exists()

    (home / STATE_FILE).write_text(json.dumps(record))
    status = run_perfops("server", "status", env=env)
    assert status.returncode == 1
    assert "local Prefect server: not running" in status.stdout
    assert not (home / STATE_FILE).exists()


def test_another_program_on_the_port_is_reported_not_used(
    tmp_path: Path, other_program: int
) -> None:
    env = _env(tmp_path, other_program)
    result = run_perfops("stats", "refresh", "--dry-run", env=env)
    assert result.returncode == 1
    assert _errors(result.stderr) == [
        f"perfops: port {other_program} is taken by another program: set "
        "PERFOPS_LOCAL_SERVER_PORT to a free port for perfops' local server, or stop that program"
    ]
    status = run_perfops("server", "status", env=env)
    assert status.returncode == 1 and "local Prefect server: port taken" in status.stdout
    assert not (tmp_path / "prefect" / STATE_FILE).exists()


def test_a_bad_dsn_is_refused_before_any_server_starts(tmp_path: Path, other_program: int) -> None:
    # The port is taken: had perfops looked for its server first, it would say so (exit 1).
    env = _env(tmp_path, other_program)
    result = run_perfops("stats", "refresh", "--dsn", "not a dsn", env=env)
    assert result.returncode == 2
    assert _errors(result.stderr) == [
        'perfops: error: Invalid value: --dsn: not a PostgreSQL DSN (missing "=" after "not" '
        "in connection info string); give a libpq string ('host=... dbname=...') or a URI "
        "(postgresql://user@host/db) (see 'perfops stats refresh --help')"
    ]
    secret = "host=127.0.0.1 password=correct horse"
    result = run_perfops("queries", "slow", "--dsn", secret, env=env)
    assert result.returncode == 2
    assert "horse" not in result.stderr and "correct" not in result.stderr


def test_prefect_api_url_is_used_and_no_local_server_started(
    tmp_path: Path, prefect_api_url: str
) -> None:
    env = {**_env(tmp_path, free_port()), "PREFECT_API_URL": prefect_api_url}
    result = run_perfops("blocks", "register", env=env)
    assert result.returncode == 0, result.stderr
    assert "started" not in result.stderr
    assert not (tmp_path / "prefect").exists()


def test_the_api_url_of_the_active_prefect_profile_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert configured_api_url() is None
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "https://prefect.internal/api"\n'
    )
    assert configured_api_url() == "https://prefect.internal/api"
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert configured_api_url() is None
