"""`perfops server ...`: the local Prefect server the command line keeps (demo.prefect_server).

Commands start it on first use without PREFECT_API_URL; these make it explicit, and show where
its UI, database and log are.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import typer

from cli.support import JsonFlag, fail, local_server, out, perfops_settings, print_json
from cli.warm_registry import processes_for, stop_for
from demo.prefect_server import ServerStatus, configured_api_url

app = typer.Typer(no_args_is_help=True)


@app.callback()
def server() -> None:
    """The local Prefect server perfops keeps for the command line (127.0.0.1:4200, PREFECT_HOME
    and SQLite database in out/prefect): started by the first command that runs a flow, reused
    by the next; its UI shows the runs, artifacts and events of local work. Not used when
    PREFECT_API_URL is set or PERFOPS_LOCAL_SERVER=off."""


def _use_note() -> str | None:
    """Why commands would not use the local server, if they would not."""
    configured = configured_api_url()
    if configured:
        return (
            f"commands report to PREFECT_API_URL={configured}, not to this server "
            "(unset it to use the local one)"
        )
    if not perfops_settings().local_server:
        return "PERFOPS_LOCAL_SERVER=off: commands use a throwaway server each"
    return None


def _print_status(status: ServerStatus, note: str | None) -> None:
    health = " (healthy)" if status.healthy else " (not healthy)" if status.pid else ""
    out.print(f"[bold]local Prefect server[/]: {status.state}{health}", highlight=False)
    rows = [
        ("UI", status.url),
        ("API", status.api_url),
        ("pid", str(status.pid) if status.pid else "-"),
        ("database", status.database),
        ("version", f"Prefect {status.version}" if status.version else "-"),
        ("log", status.log),
    ]
    for name, value in rows:
        out.print(f"  {name:<9}{value}", highlight=False)
    warm = [f"pid {w['pid']} ({w['served']} served)" for w in processes_for(os.getcwd())]
    out.print(f"  {'warm':<9}{', '.join(warm) or '-'} (PERFOPS_WARM)", highlight=False)
    if status.state == "running":
        out.print(f"  prefect CLI: export PREFECT_API_URL={status.api_url}", highlight=False)
    if note:
        out.print(f"  note: {note}", highlight=False)


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """URL, pid, health, database and version of the local server, and the warm command
    processes of this directory. Exit 0 when the server runs and is healthy, 1 when not (one
    line on stderr says why)."""
    server = local_server()
    found = server.status()
    note = _use_note()
    if as_json:
        print_json({**asdict(found), "note": note, "warm": processes_for(os.getcwd())})
    else:
        _print_status(found, note)
    if found.state == "not running":
        fail(
            "the local Prefect server is not running (`perfops server start`, or any command "
            "that runs a flow, starts it)"
        )
    if found.state != "running" or not found.healthy:
        fail(found.detail or f"the local Prefect server at {found.url} is not healthy")


@app.command()
def start() -> None:
    """Start the local server unless it runs (the first command that runs a flow does the same),
    and wait until it is healthy."""
    server = local_server()
    started = server.ensure()
    found = server.status()
    verb = "started" if started else "already running"
    out.print(
        f"local Prefect server {verb} (pid {found.pid}): UI {server.url}, database "
        f"{found.database}",
        highlight=False,
    )
    if note := _use_note():
        out.print(f"note: {note}", highlight=False)


@app.command()
def stop() -> None:
    """Stop the local server perfops started (the next command that runs a flow starts it
    again), and the warm command processes of this directory (PERFOPS_WARM). Runs and
    artifacts stay in its database."""
    server = local_server()
    outcome = server.shutdown()
    if outcome.result == "stopped":
        out.print(f"stopped the local Prefect server (pid {outcome.pid})", highlight=False)
    elif outcome.result == "stale":
        out.print(
            f"the local Prefect server (pid {outcome.pid}) had already exited; removed its "
            "pid file",
            highlight=False,
        )
    else:
        out.print(f"no local Prefect server running for {server.home}", highlight=False)
    for pid in stop_for(os.getcwd()):
        out.print(f"stopped the warm command process (pid {pid})", highlight=False)
    if os.environ.get("PREFECT_API_URL") == server.api_url:
        out.print(
            f"note: PREFECT_API_URL={server.api_url} is set: commands will fail until the server "
            "runs again (`perfops server start`)",
            highlight=False,
        )
