"""The local Prefect server the perfops command line keeps: one per out folder, started by the
first command that needs Prefect and reused by the later ones, so a command does not pay for a
throwaway server (about 4.5 s of a 6 s command) and its runs, artifacts and events stay in the
local UI.

Where it lives: PREFECT_HOME is `<out>/prefect`, with the SQLite database `prefect.db` (the
folder `perfops demo` used before), on 127.0.0.1:4200 (`PERFOPS_LOCAL_SERVER_PORT`). Beside the
database: `perfops-server.json` (pid, port, database, version: what `perfops server status`
reads), `perfops-server.log` (the server's output) and `perfops-server.lock` (held while a command
checks or starts the server, so two commands starting at once make one server).

Whose server answers: the state file names the process perfops started; that process must be
alive and a Prefect server, and the server on the port must report this PREFECT_HOME
(`GET /api/admin/settings`). A state file whose process is gone is removed; anything else on the
port (a Prefect server perfops did not start, the server of another out folder, another program)
is reported with what to do, never used.

Measured on the 2-core machine: a start takes 6-8 s, nearer 20 s the first time (it creates its
database), about 250 MB and 2-4% of a core when idle; checking a running one, about 25 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal, Self

from demo.local_server import LocalServer
from perfops.errors import PerfopsError
from perfops.redaction import redact
from perfops.settings import PREFECT_DEFAULTS

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
STARTUP_TIMEOUT_S = 120.0
"""Healthy in 6-20 s here when quiet; far more under load."""
STOP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
STATE_FILE = "perfops-server.json"
LOG_FILE = "perfops-server.log"
LOCK_FILE = "perfops-server.lock"
# The client-side settings of the command that starts the server, which the server must not take.
_NOT_FOR_THE_SERVER = (
    "PREFECT_API_URL",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
)


class LocalServerError(PerfopsError):
    """The local Prefect server cannot be started, reached or stopped; the message says what to
    do."""


@dataclass(frozen=True)
class ServerRecord:
    """What `perfops-server.json` holds about the server perfops started."""

    pid: int
    port: int
    home: str
    database: str
    log: str
    prefect_version: str
    started_at: str


State = Literal["running", "not running", "starting", "not answering", "port taken"]


@dataclass(frozen=True)
class ServerStatus:
    """The local server as found now (`perfops server status`)."""

    state: State
    url: str
    api_url: str
    healthy: bool
    pid: int | None
    database: str
    version: str | None
    home: str
    log: str
    detail: str


@dataclass(frozen=True)
class StopOutcome:
    result: Literal["stopped", "stale", "not running"]
    pid: int | None


@dataclass(frozen=True)
class _Answer:
    """Who answers on a port: nothing, a Prefect server (with its PREFECT_HOME), or another
    program."""

    listening: bool
    home: str | None = None


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile (`prefect config set`,
    `prefect cloud login`), when one is set: commands then report there and no local server is
    started. Read without importing Prefect, whose settings are fixed at import."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = profiles.get("profiles", {}).get(name, {}) if name else {}
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(url) if url else None


def _get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return json.loads(body)
    finally:
        conn.close()


def _probe(port: int) -> _Answer:
    try:
        settings = _get_json(port, "/api/admin/settings")
    except ConnectionRefusedError:
        return _Answer(listening=False)
    except (OSError, http.client.HTTPException, ValueError):
        return _Answer(listening=True)
    home = settings.get("home") if isinstance(settings, dict) else None
    return _Answer(listening=True, home=str(home) if home else None)


def _is_prefect_server(pid: int) -> bool:
    """Whether `pid` is still a running `prefect server` (not a zombie, not a reused pid)."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs: the pid and the HTTP check must do
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"] and b"prefect" in cmdline and b"server" in cmdline


class LocalPrefectServer(LocalServer):
    """The Prefect server perfops keeps under `<out_dir>/prefect` on 127.0.0.1:`port`.

    ``ensure()`` starts it unless it already runs (commands); ``start()`` raises if it runs;
    ``stop()`` stops it from any process (it is found through the state file).
    """

    def __init__(
        self,
        out_dir: Path,
        port: int = DEFAULT_PORT,
        *,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.home = (Path(out_dir) / "prefect").resolve()
        self.port = port
        self.startup_timeout = startup_timeout
        self.stale_pid: int | None = None
        """The pid of a state file found with its process gone (and removed), if any."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The UI."""
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        """What PREFECT_API_URL is set to for commands that use this server."""
        return f"{self.url}/api"

    @property
    def state_file(self) -> Path:
        return self.home / STATE_FILE

    @property
    def log_file(self) -> Path:
        return self.home / LOG_FILE

    @property
    def database(self) -> str:
        """The server's database: SQLite in PREFECT_HOME unless a connection URL is set."""
        url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
            "PREFECT_API_DATABASE_CONNECTION_URL"
        )
        return redact(url) if url else str(self.home / "prefect.db")

    # --- the protocol ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it is healthy; raise if it already runs."""
        with self._locked():
            record = self._running()
            if record is not None:
                raise LocalServerError(
                    f"the local Prefect server already runs (pid {record.pid}) at {self.url}"
                )
            self._start()
        return self

    def stop(self) -> None:
        """Stop the server perfops started here, if it runs (from any process)."""
        self.shutdown()

    # --- what commands use ----------------------------------------------------------------

    def ensure(self, on_start: Callable[[], None] | None = None) -> bool:
        """Make sure the server runs and answers, starting it if not (`on_start` is called
        first). Return True when this call started it."""
        with self._locked():
            if self._running() is not None:
                return False
            if on_start is not None:
                on_start()
            self._start()
            return True

    def shutdown(self) -> StopOutcome:
        """Stop the server perfops started (SIGTERM to its process group, SIGKILL after
        STOP_TIMEOUT_S) and remove its state file; a stale state file is only removed."""
        with self._locked():
            record = self._read_record()
            if record is None:
                return StopOutcome("not running", None)
            running = self._alive(record.pid) and _is_prefect_server(record.pid)
            if running:
                self._terminate(record.pid)
            self.state_file.unlink(missing_ok=True)
            return StopOutcome("stopped" if running else "stale", record.pid)

    def status(self) -> ServerStatus:
        """The server as found now; a stale state file is removed unless a command holds the
        lock (it may be starting the server)."""
        with self._locked(wait=False) as locked:
            starting = not locked
            record = self._read_record()
            if record is not None and not (
                self._alive(record.pid) and _is_prefect_server(record.pid)
            ):
                if locked:
                    self.state_file.unlink(missing_ok=True)
                    self.stale_pid = record.pid
                record = None
        answer = _probe(self.port)
        ours = answer.home == str(self.home)
        healthy = ours and self._healthy()
        version = self._version() if ours else None
        detail = ""
        state: State
        if record is not None and ours:
            state = "running"
        elif answer.listening:
            state, detail = "port taken", str(self._taken(answer))
        elif record is not None and starting:
            state = "starting"
            detail = (
                f"another perfops command is starting the local Prefect server (pid {record.pid})"
            )
        elif record is not None:
            state = "not answering"
            detail = (
                f"the local Prefect server (pid {record.pid}) does not answer on {self.url}: "
                f"starting, or stuck (see {self.log_file}; `perfops server stop` stops it)"
            )
        else:
            state = "not running"
        return ServerStatus(
            state=state,
            url=self.url,
            api_url=self.api_url,
            healthy=healthy,
            pid=record.pid if record else None,
            database=record.database if record else self.database,
            version=version,
            home=str(self.home),
            log=str(self.log_file),
            detail=detail,
        )

    # --- the parts ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the lock file while checking or starting the server; yield whether it is held
        (always, when waiting)."""
        if not wait and not self.home.exists():
            yield True  # nothing to guard (and no folder made just to look)
            return
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / LOCK_FILE).open("a") as handle:
            deadline = time.monotonic() + self.startup_timeout + STOP_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                    if time.monotonic() > deadline:
                        raise LocalServerError(
                            f"another perfops command has held {handle.name} for over "
                            f"{self.startup_timeout + STOP_TIMEOUT_S:.0f} s while starting "
                            "the local Prefect server: wait for it, or stop it"
                        ) from None
                    time.sleep(0.1)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_record(self) -> ServerRecord | None:
        try:
            return ServerRecord(**json.loads(self.state_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            self.state_file.unlink(missing_ok=True)  # unreadable: as good as stale
            return None

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our child: reap it, a zombie is not alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _running(self) -> ServerRecord | None:
        """The record of our server when it runs and answers as ours (waiting while it starts);
        None when none runs (a stale state file removed). Raise when the port is taken."""
        record = self._read_record()
        if record is not None and not (self._alive(record.pid) and _is_prefect_server(record.pid)):
            self.state_file.unlink(missing_ok=True)
            self.stale_pid, record = record.pid, None
        if record is None:
            answer = _probe(self.port)
            if answer.listening:
                raise self._taken(answer)
            return None
        if record.port != self.port:
            raise LocalServerError(
                f"the local Prefect server of {self.home} runs on port {record.port}, not "
                f"{self.port} (PERFOPS_LOCAL_SERVER_PORT changed?): `perfops server stop`, "
                "then rerun"
            )
        self._wait_healthy(record.pid)
        return record

    def _wait_healthy(self, pid: int) -> None:
        """Wait until the server answers as ours and healthy; raise when its process exits, the
        port turns out taken, or STARTUP_TIMEOUT_S passes."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            answer = _probe(self.port)
            if answer.listening:
                if answer.home != str(self.home):
                    raise self._taken(answer)
                return  # it answers the API as ours: as healthy as `/api/health` says
            if not self._alive(pid):
                self.state_file.unlink(missing_ok=True)
                raise LocalServerError(
                    f"the local Prefect server (pid {pid}) exited: {self._last_log_line()} "
                    f"(log: {self.log_file})"
                )
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"the local Prefect server (pid {pid}) did not answer on {self.url} within "
                    f"{self.startup_timeout:.0f} s (log: {self.log_file}); `perfops server stop`, "
                    "then rerun"
                )
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            return _get_json(self.port, "/api/health") is True
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def _version(self) -> str | None:
        try:
            return str(_get_json(self.port, "/api/admin/version"))
        except (OSError, http.client.HTTPException, ValueError):
            return None

    def _taken(self, answer: _Answer) -> LocalServerError:
        free = "PERFOPS_LOCAL_SERVER_PORT to a free port for perfops' local server"
        if answer.home and (Path(answer.home) / STATE_FILE).exists():
            who = f"the local Prefect server of another perfops out folder ({answer.home})"
            todo = f"set PERFOPS_OUT_DIR={Path(answer.home).parent} to share it, or {free}"
        elif answer.home:
            who = f"a Prefect server perfops did not start (PREFECT_HOME {answer.home})"
            todo = f"set PREFECT_API_URL={self.api_url} to report to it, or {free}"
        else:
            who, todo = "another program", f"set {free}, or stop that program"
        return LocalServerError(f"port {self.port} is taken by {who}: {todo}")

    def _environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PERFOPS_") and k not in _NOT_FOR_THE_SERVER
        }
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_SERVER_API_HOST": HOST,
                "PREFECT_SERVER_API_PORT": str(self.port),
                # The UI calls the API at this address (Prefect derives it from the settings,
                # not from `--port`).
                "PREFECT_SERVER_UI_API_URL": self.api_url,
            }
        )
        for key, value in PREFECT_DEFAULTS.items():
            env.setdefault(key, value)
        return env

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"--- perfops: starting at {datetime.now(UTC).isoformat()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start"],
                env=self._environment(),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: no Ctrl-C of the terminal
            )
        record = ServerRecord(
            pid=self._proc.pid,
            port=self.port,
            home=str(self.home),
            database=self.database,
            log=str(self.log_file),
            prefect_version=package_version("prefect"),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_file)
        try:
            self._wait_healthy(record.pid)
        except BaseException:
            self._terminate(record.pid)
            self.state_file.unlink(missing_ok=True)
            raise

    def _terminate(self, pid: int) -> None:
        """SIGTERM to the server's process group (its pid: it leads its own session), SIGKILL
        after STOP_TIMEOUT_S."""
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not self._gone_within(pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._gone_within(pid, 5.0)
        if self._proc is not None and self._proc.pid == pid:
            self._proc.wait()
            self._proc = None

    def _gone_within(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._alive(pid) and _is_prefect_server(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _last_log_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        last = [line.strip() for line in lines if line.strip()]
        return redact(last[-1]) if last else "no output"
