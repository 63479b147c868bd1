"""Resolve each outside system to a ready-to-use object: a saved block, one built from
`PERFOPS_*` variables, or the embedded default.

Flows call these with the block name they were given (or None) and pass the result to tasks;
the `Resolved.origin` tells the run record whether it talked to a real service or a default.

One rule for every system: what the caller names explicitly (a block-name parameter, or the
load target's `url`) wins over the environment; in the environment a `PERFOPS_*_BLOCK` wins
over the variables that describe a connection (`PERFOPS_DSN`, `PERFOPS_LOAD_TARGET_URL`, ...);
with neither, the embedded default (or, for a load target, a refusal). Naming two explicit
choices for one system (a load target's block and its URL) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar, cast

from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem

if TYPE_CHECKING:  # imported where used: together they add ~0.5 s to every command's start
    from prefect_aws import S3Bucket
    from prefect_email import EmailServerCredentials
from pydantic import BaseModel, Field, SecretStr

from blocks import (
    CdnTarget,
    LoadTarget,
    PostgresTarget,
    PrometheusSource,
    RedisTarget,
    SlackEscalationTarget,
)
from perfops.errors import BlockNotFound, ConfigurationError
from perfops.redaction import redact
from perfops.settings import DEFAULT_DEMO_DSN, PerfopsSettings, get_settings

T = TypeVar("T")
Origin = Literal["block", "environment", "embedded default"]

# botocore's "standard" retry mode: exponential backoff with full jitter on throttling, 5xx and
# connection errors only.
BOTO_RETRY_CONFIG = {
    "retries": {"mode": "standard", "max_attempts": 5},
    "connect_timeout": 10,
    "read_timeout": 60,
}


class CsvTrace(BaseModel):
    """A load trace in a `timestamp,value` CSV file: the metrics source without Prometheus."""

    path: Path = Field(description="CSV file with a timestamp column and a value column.")
    timestamp_column: str = "timestamp"
    value_column: str = "value"


class FileOutbox(BaseModel):
    """A folder that receives what would have been sent (Slack notices, emails) as files."""

    directory: Path = Field(description="Folder the notices or messages are written to.")


ArchiveStore: TypeAlias = "S3Bucket | LocalFileSystem"
MetricsSource: TypeAlias = PrometheusSource | CsvTrace
SlackSink: TypeAlias = SlackEscalationTarget | FileOutbox
EmailSink: TypeAlias = "EmailServerCredentials | FileOutbox"
B = TypeVar("B", bound=Block)


# How to save a block of each type (`deployments/create_blocks.py SYSTEM` reads PERFOPS_*).
CREATE_BLOCK_SYSTEM = {
    "perfops-postgres-target": "postgres",
    "perfops-prometheus-source": "prometheus",
    "perfops-redis-target": "redis",
    "perfops-slack-escalation-target": "slack",
    "s3-bucket": "s3",
    "email-server-credentials": "email",
    "perfops-cdn-target": "cdn",
}
SAVED_NAMES_SHOWN = 20


def load_block(block_type: type[B], name: str) -> B:
    """`Block.load` in a synchronous context, typed. A name with no saved block of that type
    raises `BlockNotFound` naming the type and the name, with the saved blocks of that type."""
    from prefect.exceptions import ObjectNotFound

    try:
        return cast(B, block_type.load(name))
    except ValueError as exc:  # Prefect turns the API's 404 into a ValueError
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        raise BlockNotFound(missing_block_message(block_type, name)) from None


BLOCK_PAGE = 200


def saved_block_names(block_type: type[Block] | str) -> list[str]:
    """The names of the saved (not anonymous) blocks of `block_type` (a block class or its type
    slug) on the Prefect server, sorted; none when the server does not know the type yet.
    Secrets are not read."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    slug = block_type if isinstance(block_type, str) else block_type.get_block_type_slug()
    documents: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:  # a page at a time: a fleet may save hundreds
            try:
                page = client.read_block_documents_by_type(
                    slug, offset=len(documents), limit=BLOCK_PAGE, include_secrets=False
                )
            except (ObjectNotFound, PrefectHTTPStatusError) as exc:
                if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                    raise
                return []  # the block type was never registered on this server
            documents += page
            if len(page) < BLOCK_PAGE:
                break
    return sorted(d.name for d in documents if d.name and not d.is_anonymous)


def missing_block_message(block_type: type[Block], name: str) -> str:
    """Why `name` loads nothing: `no perfops-postgres-target block named 'prdo'; saved: prod,
    staging`, or how to create one when none of that type is saved."""
    try:
        saved = saved_block_names(block_type)
    except Exception as exc:  # noqa: BLE001 - the listing only adds to the message
        slug = block_type.get_block_type_slug()
        return f"no {slug} block named {name!r} (could not list the saved ones: {redact(str(exc))})"
    return _missing(block_type, name, saved)


def _missing(block_type: type[Block], name: str, saved: list[str]) -> str:
    slug = block_type.get_block_type_slug()
    message = f"no {slug} block named {name!r}"
    if saved:
        more = len(saved) - SAVED_NAMES_SHOWN
        shown = ", ".join(saved[:SAVED_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
        return f"{message}; saved: {shown}"
    system = CREATE_BLOCK_SYSTEM.get(slug)
    how = (
        f"python deployments/create_blocks.py {system} --name {name}"
        if system
        else f"{block_type.__name__}(...).save({name!r}) or the Prefect UI (Blocks)"
    )
    return f"{message}; none saved; create one with: {how}"


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A resolved connection and where it came from, for the run record."""

    system: str
    origin: Origin
    value: T
    description: str
    name: str | None = None  # the block's name, when origin is "block"

    def __post_init__(self) -> None:
        object.__setattr__(self, "description", redact(self.description))

    @property
    def is_default(self) -> bool:
        return self.origin == "embedded default"


def _settings(settings: PerfopsSettings | None) -> PerfopsSettings:
    return settings if settings is not None else get_settings()


def resolve_postgres(
    block: str | None = None, settings: PerfopsSettings | None = None
) -> Resolved[PostgresTarget]:
    s = _settings(settings)
    name = block or s.postgres_block
    if name:
        target = load_block(PostgresTarget, name)
        return Resolved("postgres", "block", target, f"block {name}: {target.describe()}")
    if s.dsn is not None:
        target = PostgresTarget(dsn=s.dsn)
        return Resolved("postgres", "environment", target, f"PERFOPS_DSN: {target.describe()}")
    target = PostgresTarget(dsn=SecretStr(DEFAULT_DEMO_DSN))
    return Resolved(
        "postgres", "embedded default", target, f"local demo database {target.describe()}"
    )


def resolve_metrics(
    block: str | None = None, settings: PerfopsSettings | None = None
) -> Resolved[MetricsSource]:
    s = _settings(settings)
    name = block or s.prometheus_block
    if name:
        prom = load_block(PrometheusSource, name)
        return Resolved("metrics", "block", prom, f"block {name}: {prom.url}")
    if s.prometheus_url:
        prom = PrometheusSource(url=s.prometheus_url, bearer_token=s.prometheus_token)
        return Resolved("metrics", "environment", prom, f"PERFOPS_PROMETHEUS_URL: {prom.url}")
    trace = CsvTrace(path=s.trace_csv)
    return Resolved("metrics", "embedded default", trace, f"CSV trace {trace.path}")


def resolve_redis(
    block: str | None = None, settings: PerfopsSettings | None = None
) -> Resolved[RedisTarget]:
    s = _settings(settings)
    name = block or s.redis_block
    if name:
        target = load_block(RedisTarget, name)
        return Resolved("redis", "block", target, f"block {name}: {target.url}")
    if s.redis_url:
        target = RedisTarget(url=s.redis_url)
        return Resolved("redis", "environment", target, f"PERFOPS_REDIS_URL: {target.url}")
    target = RedisTarget()
    return Resolved("redis", "embedded default", target, f"local Redis {target.url}")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def resolve_load_target(
    block: str | None = None, settings: PerfopsSettings | None = None, *, url: str | None = None
) -> Resolved[LoadTarget]:
    """A load test's target: the block or the local URL named explicitly (`block`, `url`: both
    at once are refused), else the environment's PERFOPS_LOAD_TARGET_BLOCK, else its
    PERFOPS_LOAD_TARGET_URL. A URL is accepted only on a loopback host (a local server); a
    block carries the allow-list, caps and auth header. With none, a ConfigurationError saying
    how to name one."""
    s = _settings(settings)
    if block and url:
        raise ConfigurationError(
            f"name one load target, not two: the block {block!r} (--target-block, target_block) "
            f"or the local URL {url!r} (--target-url, target_url)"
        )
    name = block or (None if url else s.load_target_block)
    if name:
        target = load_block(LoadTarget, name)
        return Resolved(
            "load_target", "block", target, f"block {name}: {target.base_url}", name=name
        )
    given = url or s.load_target_url
    if given:
        from urllib.parse import urlsplit

        source = "target_url" if url else "PERFOPS_LOAD_TARGET_URL"
        host = (urlsplit(given).hostname or "").lower()
        if host not in LOOPBACK_HOSTS:
            raise ConfigurationError(
                f"{source} may name a loopback host only (got {host!r}): save a "
                "perfops-load-target block with its allow-list for any other target"
            )
        target = LoadTarget(base_url=given, allowed_hosts=list(LOOPBACK_HOSTS))
        return Resolved("load_target", "environment", target, f"{source}: {target.base_url}")
    raise ConfigurationError(
        "no load target: name a perfops-load-target block (--target-block, "
        "PERFOPS_LOAD_TARGET_BLOCK) or a local server (PERFOPS_LOAD_TARGET_URL=http://127.0.0.1:PORT)"
    )


def _s3_bucket(bucket_name: str, prefix: str, s: PerfopsSettings) -> S3Bucket:
    """An S3Bucket with credentials from the usual AWS chain and PERFOPS_S3_* / region settings."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    credentials = AwsCredentials(
        region_name=s.aws_region,
        aws_client_parameters=AwsClientParameters(
            endpoint_url=s.s3_endpoint_url, config=BOTO_RETRY_CONFIG
        ),
    )
    return S3Bucket(bucket_name=bucket_name, bucket_folder=prefix, credentials=credentials)


def _s3_block(name: str) -> Resolved[ArchiveStore]:
    from prefect_aws import S3Bucket

    bucket = load_block(S3Bucket, name)
    where = f"s3://{bucket.bucket_name}/{bucket.bucket_folder}"
    return Resolved("archive", "block", bucket, f"block {name}: {where}")


def resolve_archive(
    block: str | None = None, settings: PerfopsSettings | None = None
) -> Resolved[ArchiveStore]:
    s = _settings(settings)
    name = block or s.s3_block
    if name:
        return _s3_block(name)
    if s.s3_bucket:
        where = f"s3://{s.s3_bucket}/{s.s3_prefix}"
        bucket = _s3_bucket(s.s3_bucket, s.s3_prefix, s)
        return Resolved("archive", "environment", bucket, f"PERFOPS_S3_BUCKET: {where}")
    folder = (s.out_dir / "archive").resolve()
    return Resolved(
        "archive",
        "embedded default",
        LocalFileSystem(basepath=str(folder)),
        f"local folder {folder}",
    )


def resolve_archive_store(
    archive: str, settings: PerfopsSettings | None = None
) -> Resolved[ArchiveStore]:
    """The store behind a partition policy's `archive`: 's3-block:NAME' (a saved S3Bucket block),
    's3://bucket/prefix' (credentials and endpoint from the environment / PERFOPS_S3_* settings)
    or a local folder."""
    if archive.startswith("s3-block:"):
        return _s3_block(archive.removeprefix("s3-block:"))
    if archive.startswith("s3://"):
        bucket_name, _, prefix = archive.removeprefix("s3://").partition("/")
        if not bucket_name:
            raise ConfigurationError(f"archive {archive!r} is not s3://BUCKET[/PREFIX]")
        store = _s3_bucket(bucket_name, prefix.strip("/"), _settings(settings))
        return Resolved("archive", "environment", store, archive)
    folder = Path(archive).expanduser().resolve()
    return Resolved("archive", "environment", LocalFileSystem(basepath=str(folder)), str(folder))


def resolve_slack(
    block: str | None = None, settings: PerfopsSettings | None = None
) -> Resolved[SlackSink]:
    s = _settings(settings)
    name = block or s.slack_block
    if name:
        target = load_block(SlackEscalationTarget, name)
        return Resolved("slack", "block", target, f"block {name}: {target.api_base_url}")
    if s.slack_token is not None:
        kwargs = {"api_base_url": s.slack_api_url} if s.slack_api_url else {}
        target = SlackEscalationTarget(bot_token=s.slack_token, channels=s.slack_channels, **kwargs)
        return Resolved(
            "slack", "environment", target, f"PERFOPS_SLACK_TOKEN: {target.api_base_url}"
        )
    folder = (s.out_dir / "slack").resolve()
    return Resolved("slack", "embedded default", FileOutbox(directory=folder), f"files in {folder}")


def resolve_email(
    block: str | None = None, settings: PerfopsSettings | None = None
) -> Resolved[EmailSink]:
    from prefect_email import EmailServerCredentials

    s = _settings(settings)
    name = block or s.email_block
    if name:
        creds = load_block(EmailServerCredentials, name)
        return Resolved("email", "block", creds, f"block {name}: {_smtp_where(creds)}")
    if s.smtp_host:
        creds = EmailServerCredentials(
            smtp_server=s.smtp_host,
            smtp_type=s.smtp_security.upper(),
            smtp_port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password or SecretStr(""),
        )
        return Resolved("email", "environment", creds, f"PERFOPS_SMTP_HOST: {_smtp_where(creds)}")
    folder = (s.out_dir / "mail").resolve()
    return Resolved(
        "email", "embedded default", FileOutbox(directory=folder), f".eml files in {folder}"
    )


def _smtp_where(creds: EmailServerCredentials) -> str:
    server = getattr(creds.smtp_server, "value", creds.smtp_server)
    port = creds.smtp_port or creds.smtp_type.value
    return f"smtp://{server}:{port}"


# Block-name parameters of the flows: the block type each names, and the PERFOPS_* setting the
# resolvers fall back to when the parameter is not given.
_BLOCK_PARAMETERS: dict[str, tuple[str, str | None]] = {
    "postgres_block": ("postgres", "postgres_block"),
    "prometheus_block": ("prometheus", "prometheus_block"),
    "metrics_block": ("prometheus", "prometheus_block"),
    "redis_block": ("redis", "redis_block"),
    "s3_block": ("s3", "s3_block"),
    "archive_block": ("s3", "s3_block"),
    "slack_block": ("slack", "slack_block"),
    "email_block": ("email", "email_block"),
    "credentials_block": ("aws", None),
    "target_block": ("load_target", "load_target_block"),
    "cdn_block": ("cdn", "cdn_block"),
}


def _block_type(system: str) -> type[Block]:
    if system == "s3":
        from prefect_aws import S3Bucket

        return S3Bucket
    if system == "email":
        from prefect_email import EmailServerCredentials

        return EmailServerCredentials
    if system == "aws":
        from prefect_aws import AwsCredentials

        return AwsCredentials
    types: dict[str, type[Block]] = {
        "postgres": PostgresTarget,
        "prometheus": PrometheusSource,
        "redis": RedisTarget,
        "slack": SlackEscalationTarget,
        "load_target": LoadTarget,
        "cdn": CdnTarget,
    }
    return types[system]


def check_block_names(settings: PerfopsSettings | None = None, **names: str | None) -> None:
    """Check, before a run does any work, that every block name it was given names a saved
    block of the right type: `check_block_names(postgres_block=..., redis_block=...)`.

    Keywords are the flows' block-name parameters (postgres_block, prometheus_block,
    metrics_block, redis_block, s3_block, archive_block, slack_block, email_block,
    credentials_block, target_block, cdn_block); a None value falls back to the
    `PERFOPS_*_BLOCK` variable the resolvers read, and nothing is checked when neither is set.
    One request per block type, no secrets read. Raises `BlockNotFound` naming every missing
    one, each with the saved blocks of its type (one line each). The Prefect API must answer
    (its errors propagate)."""
    unknown = sorted(set(names) - set(_BLOCK_PARAMETERS))
    if unknown:
        raise TypeError(f"check_block_names: not a block-name parameter: {', '.join(unknown)}")
    s = _settings(settings)
    wanted: list[tuple[str, str, type[Block]]] = []  # (where the name came from, name, type)
    for parameter, given in names.items():
        system, setting = _BLOCK_PARAMETERS[parameter]
        name = given or (getattr(s, setting) if setting else None)
        if name:
            source = parameter if given else f"PERFOPS_{setting}".upper()
            wanted.append((source, name, _block_type(system)))
    saved: dict[type[Block], list[str]] = {}
    problems: list[str] = []
    for source, name, block_type in wanted:
        if block_type not in saved:
            saved[block_type] = saved_block_names(block_type)
        if name not in saved[block_type]:
            problems.append(f"{source}: {_missing(block_type, name, saved[block_type])}")
    if problems:
        raise BlockNotFound("\n".join(problems))
