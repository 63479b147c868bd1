"""Pieces every perfops command shares: consoles, common flags, progress, and running a flow
locally through Prefect with one-line errors."""

from __future__ import annotations

import gc
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cli.warm_registry import CHILD_MARK
from demo.prefect_server import LocalPrefectServer, configured_api_url
from perfops.errors import ConfigurationError, report_of
from perfops.heartbeats import heartbeats
from perfops.progress import listening
from perfops.redaction import dsn_parse_error, redact, register_secret
from perfops.settings import PerfopsSettings, apply_prefect_defaults, get_settings

out = Console(soft_wrap=True)
err = Console(stderr=True)

prefect_server_used = False
"""Whether this command's flows reported to a real Prefect server (a warm process can keep it:
cli/warm.py), not a throwaway one."""


def reset_consoles() -> None:
    """Detect the terminal again (a warm process's child got the command's stdio after the
    consoles were made): colours, width and whether progress is a live bar."""
    Console.__init__(out, soft_wrap=True)
    Console.__init__(err, stderr=True)


JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
VerboseFlag = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Prefect's flow and task logs.")
]


def set_env(name: str, value: Any) -> None:
    if value is not None and value != "":
        os.environ[name] = str(value)


def quiet_prefect_console(verbose: bool) -> None:
    """Keep flow logs off the terminal unless --verbose: they still reach the Prefect API, and
    the command prints its own summary and one-line errors. Call before importing prefect."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        if "prefect" in sys.modules:  # a warm process's child: logging is configured already
            import logging

            from prefect.logging.handlers import PrefectConsoleHandler

            for ref in list(logging._handlerList):  # type: ignore[attr-defined]
                handler = ref()
                if isinstance(handler, PrefectConsoleHandler):
                    handler.setLevel(logging.CRITICAL)


@contextmanager
def progress_reporter(enabled: bool) -> Iterator[Any]:
    """Progress on stderr: a live bar on a terminal, one line per new step otherwise (CI logs).
    Yields `update(label, done, total)`."""
    if not enabled:
        yield lambda _label, _done, _total: None
        return
    if not err.is_terminal:
        last: list[str] = []

        def log_step(label: str, _done: int, _total: int) -> None:
            if not last or last[-1] != label:
                last.append(label)
                print(f"perfops: {label}...", file=sys.stderr, flush=True)

        yield log_step
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task_id = bar.add_task("starting", total=1)

        def update(label: str, done: int, total: int) -> None:
            bar.update(task_id, description=label, completed=done, total=max(total, 1))

        yield update


def env_option(envvar: str, help: str, *param_decls: str, **kwargs: Any) -> Any:
    """A `typer.Option` also read from `envvar` (named in --help), with no default shown."""
    kwargs.setdefault("show_default", False)
    return typer.Option(*param_decls, envvar=envvar, show_envvar=True, help=help, **kwargs)


DsnOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_DSN", "PostgreSQL DSN (libpq string or URI); the password never reaches output."
    ),
]
PostgresBlockOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_POSTGRES_BLOCK",
        "Name of a saved perfops-postgres-target block (wins over --dsn).",
        show_default=True,
    ),
]
PrometheusUrlOption = Annotated[
    str | None, env_option("PERFOPS_PROMETHEUS_URL", "Prometheus base URL.")
]
ApplyFlag = Annotated[
    bool,
    typer.Option(
        "--apply",
        help="Make the changes. Without it the command only reports what it would do.",
    ),
]


WIDTH = 80
"""Human output is wrapped to fit an 80-column terminal."""


def print_wrapped(text: str, *, indent: int, style: str | None = None) -> None:
    """Print `text` wrapped to WIDTH, continuation lines indented two more, rich markup escaped."""
    lines = textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + 2),
        break_long_words=False,
        break_on_hyphens=False,
    )
    for line in lines:
        out.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)


def check_dsn(dsn: str | None, flag: str = "--dsn") -> None:
    """Refuse a DSN libpq cannot parse (exit 2), before Prefect or a server starts."""
    if not dsn:
        return
    register_secret(dsn)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot be parsed"
        reason = dsn_parse_error(reason, dsn)  # libpq quotes pieces: maybe the password's
        raise typer.BadParameter(
            f"{flag}: not a PostgreSQL DSN ({reason}); give a libpq string "
            "('host=... dbname=...') or a URI (postgresql://user@host/db)"
        ) from None


def use_dsn(dsn: str | None) -> None:
    """Make `--dsn` the PostgreSQL connection of flows run by this process (refused with exit 2
    when libpq cannot parse it)."""
    if dsn:
        check_dsn(dsn)
        os.environ["PERFOPS_DSN"] = dsn


def perfops_settings() -> PerfopsSettings:
    """The `PERFOPS_*` settings, a malformed one reported as one line."""
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "PERFOPS_" + "_".join(str(part) for part in first["loc"]).upper()
        raise ConfigurationError(f"{name}: {first['msg']} (got {first.get('input')!r})") from None


def local_server() -> LocalPrefectServer:
    """The local Prefect server of this out folder (PERFOPS_OUT_DIR, PERFOPS_LOCAL_SERVER_PORT)."""
    settings = perfops_settings()
    return LocalPrefectServer(settings.out_dir, settings.local_server_port)


def use_prefect_server(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Choose the Prefect server this process's flows report to. Call before importing prefect.

    PREFECT_API_URL when set (in the environment or the active Prefect profile); else the local
    server perfops keeps under the out folder, started here on first use (its UI address is
    printed once, on stderr); with PERFOPS_LOCAL_SERVER=off, a throwaway server per command.
    """
    global prefect_server_used
    apply_prefect_defaults()
    if "prefect" in sys.modules:
        # Prefect's settings are fixed once imported: in-process tests, or a warm process's
        # child (cli/warm.py), whose settings chose the local server as this command would
        # (same variables); it may have been stopped since: started again on its port
        warm_child = os.environ.get(CHILD_MARK)
        if warm_child and not configured_api_url() and perfops_settings().local_server:
            server = local_server()
            _ensure_local(server, progress)
            os.environ["PREFECT_API_URL"] = server.api_url
        return
    if configured_api_url():
        prefect_server_used = True
        return
    if not perfops_settings().local_server:
        return
    server = local_server()
    _ensure_local(server, progress)
    os.environ["PREFECT_API_URL"] = server.api_url
    prefect_server_used = True


def _ensure_local(
    server: LocalPrefectServer, progress: Callable[[str, int, int], None] | None
) -> None:
    """Start the local server unless it runs, saying so once on stderr with its UI address."""

    def starting() -> None:
        if progress is not None:
            progress("starting the local Prefect server (once: 10-20 s)", 0, 1)

    if server.ensure(on_start=starting):
        gone = server.stale_pid
        stale = f"; the previous one (pid {gone}) had exited" if gone else ""
        err.print(
            f"perfops: started the local Prefect server{stale}; its UI shows the runs, "
            f"artifacts and events of local work: {server.url} (`perfops server stop` stops it)",
            highlight=False,
            soft_wrap=True,
        )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Import Prefect without the cyclic garbage collector, then freeze what the import made.

    Importing Prefect creates a few hundred thousand long-lived objects (pydantic models and
    schemas); the collector scans them again and again while they are made, about 7% of the
    import's CPU time here. Reference counting still frees everything meanwhile; `gc.freeze()`
    keeps the import's objects out of later collections.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def run_flow(
    flow: Callable[..., Any],
    parameters: dict[str, Any],
    *,
    verbose: bool,
    label: str,
    show_progress: bool = True,
) -> Any:
    """Run `flow` in this process through Prefect and return its result.

    `flow` is given as a zero-argument loader (imports happen after Prefect's settings are set).
    A failed run raises the flow's exception, which `main()` prints as one line.
    """
    apply_prefect_defaults()
    quiet_prefect_console(verbose)
    with progress_reporter(show_progress) as progress:
        use_prefect_server(progress)
        progress(f"{label} (starting Prefect)", 0, 1)
        with _collector_paused():
            loaded = flow()
        with heartbeats(get_settings().cli_heartbeats), listening(progress):
            state = loaded(**parameters, return_state=True)
    # a run whose work failed gives its report (the caller says what failed); an error raises
    result = report_of(state.result(raise_on_failure=False))
    if isinstance(result, BaseException):
        raise result
    return result


def print_json(value: Any) -> None:
    """Print `value` (pydantic models, dataclasses, plain data) as redacted JSON on stdout."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    out.print_json(redact(json.dumps(value, default=str)))


def fail(message: str) -> None:
    """Stop the command with exit code 1 and a one-line message."""
    print(f"perfops: {redact(message)}", file=sys.stderr)
    raise typer.Exit(1)
