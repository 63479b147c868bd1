"""A private PostgreSQL cluster for the demo when no server is reachable: `initdb` and `pg_ctl`
from the Debian packages, owned by the `postgres` user, on its own port under `out/pgdata`,
with pg_stat_statements preloaded. Starts in about a second."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from perfops.errors import MissingPrerequisite

PRIVATE_PORT = 55432


def find_pg_bin() -> Path:
    """The newest PostgreSQL server binaries directory (`/usr/lib/postgresql/N/bin`)."""
    roots = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not roots:
        raise MissingPrerequisite(
            "no PostgreSQL server binaries found: apt-get install postgresql-15 "
            "(or set PERFOPS_DEMO_DSN to a reachable server)"
        )
    return roots[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise MissingPrerequisite("running as root needs runuser (util-linux) to start PostgreSQL")
    return [runuser, "-u", "postgres", "--", *cmd]


def ensure_private_cluster(datadir: Path, port: int = PRIVATE_PORT) -> str:
    """Create (once) and start (if stopped) a private cluster; return its DSN (no password)."""
    pg_bin = find_pg_bin()
    datadir = datadir.resolve()
    if not (datadir / "PG_VERSION").exists():
        datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(datadir, "postgres", "postgres")
            shutil.chown(datadir.parent, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# perfops private demo cluster\n"
                f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{datadir}'\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
            )
    status = subprocess.run(
        _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(datadir), "status"]),
        capture_output=True,
        timeout=30,
    )
    if status.returncode != 0:
        subprocess.run(
            _as_postgres(
                [
                    str(pg_bin / "pg_ctl"),
                    "-D",
                    str(datadir),
                    "-l",
                    str(datadir / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def stop_private_cluster(datadir: Path) -> None:
    """Stop the private cluster if it runs."""
    if (datadir / "postmaster.pid").exists():
        subprocess.run(
            _as_postgres(
                [str(find_pg_bin() / "pg_ctl"), "-D", str(datadir.resolve()), "-m", "fast", "stop"]
            ),
            capture_output=True,
            timeout=60,
        )
