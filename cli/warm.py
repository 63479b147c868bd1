"""The warm command process: `perfops` answers in about a second instead of three to four.

Most of a command's time is Python importing Prefect (2-3 s of CPU here) before any work. After a
command that ran a flow against a real Prefect server (the local one perfops keeps, or
PREFECT_API_URL), perfops leaves one process behind that has imported Prefect, the CLI and every
flow, prepared exactly as a command would be, and then waits on a Unix socket. The next
`perfops ...` from the same directory with the same PREFECT_*/PERFOPS_* settings connects, passes
its arguments, environment, working directory and its stdin/stdout/stderr, and the warm process
forks a child that runs the command there: same code, same output, same exit status, the flow
run in the same Prefect server. The design is Mercurial's `chg` command server.

It is never used when it could answer differently from a fresh process:

- the socket is keyed by the Python, the project, the working directory, every PREFECT_* and
  PERFOPS_* variable and the modification times of the Prefect settings files (profiles,
  `.env`, `prefect.toml`, `pyproject.toml` in the working directory): any change, another key;
- a project source file it loaded changed, or the installed packages changed: it answers
  "stale", exits, and the command runs the cold way (which leaves a fresh warm process);
- it is someone else's: the socket lives in a 0700 directory of this user and the peer's uid
  is checked.

A command that could not be handed over runs the cold way, never twice: the hand-over either
fails before the child starts (cold path) or the child runs it. `PERFOPS_WARM=off` turns it off;
it exits after PERFOPS_WARM_IDLE seconds (default 1800) without a command, and `perfops server
stop` stops the ones of its directory. Its log: `<runtime dir>/perfops-<uid>/<key>.log`.

This module is the `perfops` entry point and imports nothing beyond the standard library until
it knows which way to go.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

from cli.warm_registry import (
    CHILD_MARK,
    ROOT,
    enabled,
    key_of,
    mtime_ns,
    processes_for,
    runtime_dir,
    socket_path,
)

HEADER = struct.Struct("!I")
MAX_REQUEST = 16 << 20
MAX_WARM = 4
"""At most this many warm processes of this user at once (one per directory and settings)."""


# --- the client: the `perfops` entry point ----------------------------------------------------


def entrypoint() -> None:
    """Run the command in the warm process when one matches, else the cold way."""
    if enabled(os.environ) and CHILD_MARK not in os.environ:
        directory = runtime_dir()
        if directory is not None:
            cwd = os.getcwd()
            key = key_of(os.environ, cwd)
            code = _run_warm(socket_path(directory, key), key, cwd)
            if code is not None:
                sys.exit(code)
            _leave_warm_process_at_exit(directory, key)
    from cli.command import entrypoint as cold

    cold()


def _send_request(conn: socket.socket, key: str, cwd: str) -> None:
    request = json.dumps(
        {"key": key, "argv": sys.argv[1:], "cwd": cwd, "env": dict(os.environ)}
    ).encode()
    fds = array.array("i", [0, 1, 2])
    conn.sendmsg(
        [HEADER.pack(len(request)), request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
    )


def _run_warm(path: str, key: str, cwd: str) -> int | None:
    """The command's exit status from the warm process, or None when it did not take it."""
    if not os.path.exists(path):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        _send_request(conn, key, cwd)
        reader = conn.makefile("rb")
        answer = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if answer.get("status") != "ok":
        conn.close()
        return None  # stale or another key: nothing ran
    child = int(answer["pid"])

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    while True:
        try:
            line = reader.readline()
            break
        except InterruptedError:
            continue
    conn.close()
    try:
        return int(json.loads(line)["exit"])
    except (ValueError, KeyError, TypeError):
        print(
            f"perfops: the warm command process (pid {child}) ended without an exit status; "
            "PERFOPS_WARM=off runs commands without it",
            file=sys.stderr,
        )
        return 1


def _leave_warm_process_at_exit(directory: str, key: str) -> None:
    """After this (cold) command, start a warm process for the next, if it used a Prefect server
    a warm process can keep (the local one or PREFECT_API_URL; not a throwaway one)."""
    import atexit

    env = dict(os.environ)

    def leave() -> None:
        support = sys.modules.get("cli.support")
        if support is None or not getattr(support, "prefect_server_used", False):
            return
        if len(processes_for(None)) >= MAX_WARM:
            return  # each holds ~300 MB: the others serve their settings until they idle out
        import subprocess

        log = os.path.join(directory, f"{key}.log")
        with open(log, "ab") as handle:
            subprocess.Popen(
                [sys.executable, "-m", "cli.warm", key],
                env=env,
                cwd=os.getcwd(),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                close_fds=True,
            )

    atexit.register(leave)


# --- the warm process -------------------------------------------------------------------------


def _log(message: str) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{when} perfops warm [{os.getpid()}] {message}", flush=True)


def _project_files() -> dict[str, int]:
    """Modification times of the project's loaded modules and of the installed packages."""
    seen: dict[str, int] = {}
    venv = os.path.join(ROOT, ".venv")
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(ROOT) and not path.startswith(venv):
            seen[path] = mtime_ns(path)
    for entry in sys.path:
        if entry.endswith("site-packages"):
            seen[entry] = mtime_ns(entry)
    return seen


def changed(files: dict[str, int]) -> str | None:
    """The first file whose modification time is not the one recorded, if any."""
    for path, mtime in files.items():
        if mtime_ns(path) != mtime:
            return path
    return None


def _preload() -> None:
    """Prepare as a command would (Prefect's settings and server chosen before Prefect is
    imported) and import what commands use. A child starts from the command's own environment
    and adds what the command itself adds, as a fresh process would (`use_prefect_server`)."""
    import gc
    import importlib
    import pkgutil

    gc.disable()
    try:
        from cli import support

        support.apply_prefect_defaults()
        support.use_prefect_server()
        import flows
        from cli.command import cli_command

        cli_command()

        for info in pkgutil.iter_modules(flows.__path__):
            importlib.import_module(f"flows.{info.name}")
        for name in ("prefect.flow_engine", "prefect.task_engine", "fastapi.encoders"):
            importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


def serve(key: str) -> int:
    """Prepare, then run commands from the socket until idle, stale or stopped."""
    import fcntl
    import threading

    directory = runtime_dir()
    if directory is None:
        return 1
    path = socket_path(directory, key)
    lock = open(path + ".lock", "w")  # noqa: SIM115 (held for the process's life)
    _held.append(lock)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another warm process for this key runs or starts
    if key != key_of(os.environ, os.getcwd()):
        _log("started with settings that are not the key's; not serving")
        return 1
    started = time.monotonic()
    _preload()
    if threading.active_count() != 1:
        _log(f"{threading.active_count()} threads after preparing: forking is unsafe, exiting")
        return 1
    files = _project_files()
    from perfops.settings import get_settings

    idle = get_settings().warm_idle  # PERFOPS_WARM_IDLE, validated with the other settings

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    server.bind(staging)
    os.chmod(staging, 0o600)
    server.listen(16)
    os.replace(staging, path)
    ours = os.stat(path).st_ino
    info: dict[str, Any] = {"pid": os.getpid(), "cwd": os.getcwd(), "key": key, "served": 0}
    _write_info(path, info)
    _log(f"ready in {time.monotonic() - started:.1f} s on {path}")

    global _listener
    _listener = server
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server.settimeout(30)
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if time.monotonic() - last > idle:
                    _log(f"idle for {idle:.0f} s, exiting")
                    break
                if _inode(path) != ours:
                    _log("socket replaced or removed, exiting")
                    break
                continue
            except InterruptedError:
                continue
            last = time.monotonic()
            stale = _take(conn, key, files)
            if stale:
                _log(f"{stale}: exiting")
                break
            info["served"] = int(info["served"]) + 1
            _write_info(path, info)
    except _Stopped:
        _log("stopped (SIGTERM)")
    finally:
        server.close()
        if _inode(path) == ours:
            os.unlink(path)
            os.unlink(path + ".json")
    return 0


class _Stopped(Exception):
    pass


_listener: socket.socket | None = None
_held: list[Any] = []


def _stop(_signum: int, _frame: Any) -> None:
    raise _Stopped


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _write_info(path: str, info: dict[str, Any]) -> None:
    staging = f"{path}.json.{os.getpid()}"
    with open(staging, "w") as handle:
        json.dump(info, handle)
    os.replace(staging, path + ".json")


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(
        HEADER.size + 65536, socket.CMSG_SPACE(3 * fds.itemsize)
    )
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if len(data) < HEADER.size:
        raise ValueError("short request")
    (size,) = HEADER.unpack_from(data)
    if size > MAX_REQUEST:
        raise ValueError("request too large")
    body = data[HEADER.size :]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError("truncated request")
        body += more
    return json.loads(body), list(fds)


def _take(conn: socket.socket, key: str, files: dict[str, int]) -> str:
    """Hand one command to a child; return why this process must exit, or ''."""
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        request, fds = _receive(conn)
        why = ""
        if uid != os.getuid():
            conn.sendall(b'{"status": "refused"}\n')
        elif request.get("key") != key or len(fds) != 3:
            conn.sendall(b'{"status": "stale"}\n')
        elif moved := changed(files):
            conn.sendall(b'{"status": "stale"}\n')
            why = f"{moved} changed"
        elif os.fork() == 0:
            _child(conn, fds, request)  # never returns
        return why
    except (OSError, ValueError) as exc:
        _log(f"request dropped: {exc}")
        return ""
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """Become the command: its stdio, directory, environment and arguments; run it; report the
    exit status after the exit handlers (Prefect drains its log and event queues there)."""
    import atexit
    import gc

    code = 1
    try:
        if _listener is not None:
            _listener.close()
        for handle in _held:  # a long command must not keep the next warm process out
            handle.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        env = {**request["env"], CHILD_MARK: "1"}
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["perfops", *request["argv"]]
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty())  # type: ignore[union-attr]
        from cli import support
        from cli.command import main

        support.reset_consoles()
        conn.sendall(json.dumps({"status": "ok", "pid": os.getpid()}).encode() + b"\n")
        try:
            code = main()
        except KeyboardInterrupt:
            print("perfops: aborted", file=sys.stderr)
            code = 130
        except SystemExit as exc:
            code = _exit_status(exc)
        except BaseException:  # noqa: BLE001 (as a fresh process: the traceback, exit 1)
            traceback.print_exc()
            code = 1
        gc.freeze()
        atexit._run_exitfuncs()  # what a fresh process's exit would run
    except BaseException:  # noqa: BLE001 (the hand-over itself failed)
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):  # the command is over; the client may be gone
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)


def _exit_status(exc: SystemExit) -> int:
    """The status a fresh process would exit with (a message is printed, then 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
