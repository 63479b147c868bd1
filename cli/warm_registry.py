"""Where the warm command processes (cli/warm.py) live and which one a command may use: this
user's private runtime directory, the key of a command's settings, and stopping the ones of a
directory (`perfops server stop`). Standard library only: the `perfops` entry point reads it
before anything else is imported."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_MARK = "PERFOPS_WARM_CHILD"
"""Set in a warm child's environment (its commands never leave another warm process)."""
OFF_WORDS = {"0", "false", "off", "no", "n", "f"}


# --- what both sides compute ------------------------------------------------------------------


def enabled(env: dict[str, str] | os._Environ[str]) -> bool:
    return env.get("PERFOPS_WARM", "on").strip().lower() not in OFF_WORDS


def runtime_dir() -> str | None:
    """This user's private directory for the sockets, or None when it is not safely ours."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"perfops-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def mtime_ns(path: str) -> int:
    """`path`'s modification time in nanoseconds, -1 when it is missing."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def key_of(env: dict[str, str] | os._Environ[str], cwd: str) -> str:
    """What a warm process must share with a command to run it exactly as a fresh one would."""
    prefect_home = env.get("PREFECT_HOME") or os.path.join(os.path.expanduser("~"), ".prefect")
    profiles = env.get("PREFECT_PROFILES_PATH") or os.path.join(prefect_home, "profiles.toml")
    parts = [sys.executable, ROOT, cwd]
    parts += sorted(
        f"{name}={value}"
        for name, value in env.items()
        if name.startswith(("PREFECT_", "PERFOPS_")) and name != CHILD_MARK
    )
    for path in (profiles, ".env", "prefect.toml", "pyproject.toml"):
        parts.append(f"{path}@{mtime_ns(os.path.join(cwd, path))}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def socket_path(directory: str, key: str) -> str:
    return os.path.join(directory, f"{key}.sock")


def is_warm_process(pid: int, key: str) -> bool:
    """Is `pid` a live warm process serving `key` (not a pid the system gave to another
    program since)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return b"cli.warm" in argv and key.encode() in argv


def processes_for(cwd: str | None) -> list[dict[str, object]]:
    """The live warm processes serving `cwd` (every key; None: every directory): pid, cwd,
    key, commands served."""
    directory = runtime_dir()
    found: list[dict[str, object]] = []
    if directory is None:
        return found
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".sock.json"):
            continue
        try:
            with open(os.path.join(directory, name)) as handle:
                info = json.load(handle)
            if cwd not in (None, info.get("cwd")):
                continue
            if is_warm_process(int(info["pid"]), str(info["key"])):
                found.append(info)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def stop_for(cwd: str) -> list[int]:
    """Stop the warm processes serving `cwd` (every key); return their pids."""
    stopped: list[int] = []
    for info in processes_for(cwd):
        pid = int(str(info["pid"]))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    return stopped
