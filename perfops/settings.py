"""perfops' environment settings (prefix `PERFOPS_`), the embedded defaults, and the Prefect
settings perfops needs on a small machine.

Resolution order for every outside system, highest first:
1. a saved block named by a flow parameter or a `PERFOPS_<SYSTEM>_BLOCK` variable;
2. connection settings in `PERFOPS_*` variables (what the CLI's `--dsn`-style flags set);
3. the embedded default (local PostgreSQL, a CSV trace, files under `out/`).
Secrets are never flow parameters: a deployment names a block, the CLI sets variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_FLEET_FILE = PROJECT_DIR / "deployments" / "fleet.yaml"
DEFAULT_TRACE = PROJECT_DIR / "data" / "traces" / "nyc_taxi.csv"
DEFAULT_DEMO_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=perfops_demo"


class PerfopsSettings(BaseSettings):
    """Connection settings read from `PERFOPS_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PERFOPS_", extra="ignore")

    out_dir: Path = Field(default=Path("out"), description="Where embedded defaults write files.")

    postgres_block: str | None = None
    fleet_file: Path = Field(
        default=DEFAULT_FLEET_FILE,
        description="The fleet definition `--fleet NAME` and a flow's `targets` read "
        "(docs/fleet.md).",
    )
    dsn: SecretStr | None = Field(default=None, description="libpq DSN of the target database.")

    prometheus_block: str | None = None
    prometheus_url: str | None = None
    prometheus_token: SecretStr | None = None
    trace_csv: Path = Field(default=DEFAULT_TRACE, description="CSV trace used without Prometheus.")

    redis_block: str | None = None
    redis_url: str | None = None
    cdn_block: str | None = Field(
        default=None,
        description="A perfops-cdn-target block invalidate_cache purges (docs/caches.md).",
    )

    s3_block: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "perfops"
    s3_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    slack_block: str | None = None
    slack_token: SecretStr | None = None
    slack_channels: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["#perfops"])
    slack_api_url: str | None = None

    load_target_block: str | None = None
    load_target_url: str | None = Field(
        default=None,
        description="Without a perfops-load-target block: a loopback base URL (127.0.0.1, "
        "localhost) load tests may target; any other host needs a block (its allow-list).",
    )
    load_tests_file: Path = Field(
        default=PROJECT_DIR / "deployments" / "load_tests.yaml",
        description="The load tests `perfops load run NAME` reads (docs/load-tests.md).",
    )

    email_block: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str = Field(default="insecure", pattern="^(insecure|starttls|ssl)$")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    email_from: str = "perfops@localhost"

    cli_heartbeats: bool = Field(
        default=False,
        description="Emit Prefect flow-run heartbeats from flows the CLI runs in the terminal. "
        "Off by default: heartbeats drive zombie detection of unattended deployment runs (which "
        "keep them), and Prefect's sync engine waits up to a second at the end of every run for "
        "the heartbeat thread to stop.",
    )

    local_server: bool = Field(
        default=True,
        description="Without PREFECT_API_URL, keep one local Prefect server for the command line "
        "(PREFECT_HOME and its SQLite database in <out_dir>/prefect), started by the first command "
        "and reused by the next, so runs stay in its UI. `off`: a throwaway server per command "
        "(Prefect's ephemeral mode; what the tests use).",
    )
    local_server_port: int = Field(
        default=4200, ge=1, le=65535, description="Port of the local Prefect server on 127.0.0.1."
    )
    warm: bool = Field(
        default=True,
        description="After a command that ran a flow on a real Prefect server, keep a process "
        "with Prefect imported for the next command of this directory and these settings "
        "(cli/warm.py: read by the `perfops` entry point itself, before anything is imported). "
        "`off`: every command starts afresh (what the tests use).",
    )
    warm_idle: float = Field(
        default=1800, gt=0, description="Seconds the warm command process waits for a command."
    )

    @field_validator("fleet_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """PERFOPS_FLEET_FILE="" is unset (as `--fleet-file` takes it), not the directory ".":
        the default fleet file."""
        if isinstance(value, str) and not value.strip():
            return DEFAULT_FLEET_FILE
        return value

    @field_validator("slack_channels", mode="before")
    @classmethod
    def _split_channels(cls, value: object) -> object:
        if isinstance(value, str):
            return [c.strip() for c in value.split(",") if c.strip()]
        return value


_read: dict[tuple[tuple[str, str], ...], PerfopsSettings] = {}


def get_settings() -> PerfopsSettings:
    """The settings of the current `PERFOPS_*` variables (the CLI sets variables after import):
    read again whenever one changed, else the last reading (pydantic-settings takes ~40 ms to
    read them). Treat the result as read-only."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("PERFOPS_")))
    settings = _read.get(env)
    if settings is None:
        _read.clear()
        settings = _read[env] = PerfopsSettings()
    return settings


PREFECT_DEFAULTS = {
    # A temporary SQLite server takes 7-12 s to start here; the default 20 s is too tight.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # No internet on these machines: telemetry only produces errors.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A run waiting for a global concurrency slot (perfops-db-*, perfops-cluster-*) is told to
    # ask again after at most this many seconds (Prefect's default 30): it starts soon after
    # the slot frees (docs/fleet.md).
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
}


def apply_prefect_defaults() -> None:
    """Set the Prefect settings above unless the user set them. Call before importing prefect."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
