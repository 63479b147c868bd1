"""Partition archives: a detached partition streamed out with COPY into a Parquet file, uploaded
with its SHA-256 and a manifest, verified from storage, and loaded back (restore).

Layout in the archive store, per table (each part URL-quoted so no name can escape its folder):

    <schema>/<table>/<partition>.parquet        zstd-compressed Parquet, one row group per batch
    <schema>/<table>/<partition>.manifest.json  rows, min/max of the partition key, columns, sha256

The manifest is written last: an archive without a manifest is incomplete and is written again.

Types: COPY's CSV text (DateStyle ISO, TimeZone UTC) is parsed by pyarrow's CSV reader straight
from the COPY stream (nothing is held in memory but one batch): integers, floats, booleans,
timestamps (with and without time zone) and dates keep their type; numeric, json/jsonb, uuid,
arrays and every other type are kept as their PostgreSQL text, exact. NULL and the empty string
stay distinct. `infinity` timestamps cannot be archived (the dump fails; nothing is dropped).
"""

from __future__ import annotations

import io
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field

from blocks import PostgresTarget
from blocks.resolve import ArchiveStore
from decisions.partition_rotation import DEFAULT_BATCH_ROWS, DEFAULT_SPOOL_BYTES, RotationSettings
from decisions.partitioning import partition_label
from perfops.errors import ChecksumMismatch, ConfigurationError, ConnectionFailed, PerfopsError
from perfops.redaction import one_line
from tasks.postgres.partition_changes import bound_literal, count_rows
from tasks.postgres.partitions import qualified_name
from tasks.postgres.server import connect, ensure_primary, set_timeouts
from tasks.storage import (
    get_file,
    get_object,
    get_stream,
    object_exists,
    object_location,
    put_object,
    put_stream,
    stream_digest,
)
from tasks.transient_errors import RETRY_DEFAULTS

MANIFEST_VERSION = 1
COMPRESSION = "zstd"
_CSV_BLOCK = 1 << 20

_ARROW_TYPES: dict[str, pa.DataType] = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "timestamp without time zone": pa.timestamp("us"),
}


class ArchiveError(PerfopsError):
    """An archive could not be written or verified; nothing was dropped."""


class ArchiveColumn(BaseModel):
    name: str
    type: str = Field(description="format_type(atttypid, atttypmod), e.g. timestamp with time zone")
    not_null: bool = False


class Manifest(BaseModel):
    """What an archive holds, written beside it and read back before any drop."""

    version: int = MANIFEST_VERSION
    schema_name: str
    parent: str
    partition: str
    partition_schema: str | None = Field(
        default=None, description="The partition's schema when not the parent's (None: the same)."
    )
    key_column: str
    lower: datetime | None = None
    upper: datetime | None = None
    rows: int
    min_key: str | None
    max_key: str | None
    columns: list[ArchiveColumn]
    object_key: str
    sha256: str
    bytes: int
    format: str = "parquet"
    compression: str = COMPRESSION
    timezone: str = Field(default="UTC", description="The policy's zone (wall time of date keys).")
    database: str | None = Field(
        default=None,
        description="The database the rows came from, `host:port/dbname` (None: written by an "
        "older perfops). An archive of another database is never overwritten or reused.",
    )
    created_at: datetime


class DumpResult(BaseModel):
    rows: int
    min_key: str | None
    max_key: str | None
    columns: list[ArchiveColumn]
    sha256: str
    bytes: int
    seconds: float


class ArchiveRecord(BaseModel):
    """A verified archive: the manifest and where it lives."""

    manifest: Manifest
    uri: str
    manifest_uri: str


def archive_keys(schema_name: str, parent: str, partition: str) -> tuple[str, str]:
    """(object key, manifest key) of one partition's archive. `partition` is its label: the bare
    name in the parent's schema, `schema.name` for a partition that lived elsewhere (so two
    partitions of one name in different schemas never share an archive)."""
    folder = f"{quote(schema_name, safe='')}/{quote(parent, safe='')}"
    base = f"{folder}/{quote(partition, safe='')}"
    return f"{base}.parquet", f"{base}.manifest.json"


def _bare_type(pg_type: str) -> str:
    """format_type with typmod -> the name _ARROW_TYPES knows (`timestamp(3) with time zone`)."""
    if pg_type.startswith("timestamp("):
        return pg_type.split(")", 1)[0].split("(")[0] + pg_type.split(")", 1)[1]
    return pg_type


def arrow_schema(columns: list[ArchiveColumn]) -> pa.Schema:
    fields = []
    for col in columns:
        metadata = {"pg_type": col.type}
        fields.append(
            pa.field(
                col.name, _ARROW_TYPES.get(_bare_type(col.type), pa.string()), metadata=metadata
            )
        )
    return pa.schema(fields)


_COLUMNS_QUERY = """
    select a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
           a.attnotnull as not_null
    from pg_attribute a
    where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped
    order by a.attnum
"""


class _CopyStream(io.RawIOBase):
    """A file-like view of `COPY ... TO STDOUT` for pyarrow's streaming CSV reader. libpq hands
    out one row per chunk: reads gather chunks until the caller's buffer is full."""

    def __init__(self, copy: Any) -> None:
        self._chunks = iter(copy)
        self._pending = bytearray()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = len(b)
        pending = self._pending
        while len(pending) < want and not self._done:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
            else:
                pending += chunk
        n = min(want, len(pending))
        b[:n] = pending[:n]
        del pending[:n]
        return n


def spool(max_bytes: int = DEFAULT_SPOOL_BYTES, directory: str | None = None) -> IO[bytes]:
    """A binary scratch file held in memory until it grows past `max_bytes`, then moved to a
    temporary file (in `directory`); gone when closed."""
    return tempfile.SpooledTemporaryFile(
        max_size=max_bytes, mode="w+b", dir=directory, prefix="perfops-archive-"
    )


_EPOCH = datetime(1970, 1, 1)
_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}


def _as_py(scalar: pa.Scalar) -> Any:
    """A scalar as a Python value. Timestamps and dates are converted here: pyarrow's own
    `as_py()` imports pandas (0.4 s, on the first archive of a run) to look for nanoseconds."""
    if not scalar.is_valid:
        return None
    kind = scalar.type
    if pa.types.is_timestamp(kind):
        value = scalar.value
        micros = value // 1_000 if kind.unit == "ns" else value * _MICROS[kind.unit]
        naive = _EPOCH + timedelta(microseconds=micros)
        return naive.replace(tzinfo=UTC) if kind.tz is not None else naive
    if pa.types.is_date32(kind):
        return (_EPOCH + timedelta(days=scalar.value)).date()
    return scalar.as_py()


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def dump_table_to_parquet(
    target: PostgresTarget,
    schema_name: str,
    table_name: str,
    key_column: str,
    sink: IO[bytes],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    statement_timeout_ms: int = 600_000,
) -> DumpResult:
    """Stream `schema.table` with COPY (CSV) into zstd Parquet written to the seekable binary file
    `sink` (emptied first, so a retry starts over), `batch_rows` rows per row group, counting rows
    and the min/max of `key_column` on the way.

    The flow hands in a `SpooledTemporaryFile`: an archive smaller than its limit never touches
    the local disk, whose writeback would otherwise slow the database's WAL flushes when both
    share a disk."""
    started = time.monotonic()
    where = qualified_name(schema_name, table_name)
    sink.seek(0)
    sink.truncate()
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        conn.read_only = True
        conn.execute(
            "select set_config('DateStyle', 'ISO, YMD', false), "
            "set_config('TimeZone', 'UTC', false), set_config('IntervalStyle', 'postgres', false)"
        )
        columns = [ArchiveColumn(**r) for r in conn.execute(_COLUMNS_QUERY, (where,)).fetchall()]
        if not columns:
            raise ConfigurationError(
                f"{where} does not exist or has no columns: nothing to archive"
            )
        if key_column not in {c.name for c in columns}:
            raise ConfigurationError(f"{where} has no column {key_column!r}")
        schema = arrow_schema(columns)
        convert = pacsv.ConvertOptions(
            column_types={f.name: f.type for f in schema},
            true_values=["t"],
            false_values=["f"],
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        read = pacsv.ReadOptions(
            column_names=[c.name for c in columns], block_size=_CSV_BLOCK, use_threads=False
        )
        rows = 0
        lo: Any = None
        hi: Any = None
        copy_sql = sql.SQL("copy {} to stdout (format csv)").format(
            sql.Identifier(schema_name, table_name)
        )
        with (
            conn.cursor() as cur,
            cur.copy(copy_sql) as copy,
            pq.ParquetWriter(sink, schema, compression=COMPRESSION) as writer,
        ):
            reader = pacsv.open_csv(_CopyStream(copy), read_options=read, convert_options=convert)
            pending: list[pa.RecordBatch] = []
            pending_rows = 0

            def flush() -> None:
                nonlocal pending, pending_rows
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, schema=schema))
                    pending, pending_rows = [], 0

            for batch in reader:
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
                if batch.num_rows:
                    mm = pc.min_max(batch.column(key_column))
                    bmin, bmax = _as_py(mm["min"]), _as_py(mm["max"])
                    if bmin is not None:
                        lo = bmin if lo is None else min(lo, bmin)
                        hi = bmax if hi is None else max(hi, bmax)
                rows += batch.num_rows
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= batch_rows:
                    flush()
            flush()
    sha256, size = stream_digest(sink)
    return DumpResult(
        rows=rows,
        min_key=_key_text(lo),
        max_key=_key_text(hi),
        columns=columns,
        sha256=sha256,
        bytes=size,
        seconds=round(time.monotonic() - started, 3),
    )


def upload_archive(store: ArchiveStore, body: IO[bytes], manifest: Manifest) -> str:
    """Upload the Parquet dump `body` with the manifest's SHA-256, then the manifest (last: the
    archive's commit mark). Returns the object's location."""
    stored = put_stream(store, manifest.object_key, body, sha256=manifest.sha256)
    if stored.size != manifest.bytes:
        raise ArchiveError(
            f"{stored.location}: uploaded {stored.size} bytes, the manifest says {manifest.bytes}"
        )
    _, manifest_key = _keys(manifest)
    put_object.fn(store, manifest_key, manifest.model_dump_json(indent=2).encode())
    return stored.location


class ArchiveSource(BaseModel):
    """A detached partition to archive, and what its manifest records about where it came from:
    the parent (`schema_name`, `parent`) and the partition (`partition` in `partition_schema`,
    None: the parent's schema)."""

    schema_name: str
    parent: str
    partition: str
    partition_schema: str | None = None
    key_column: str
    lower: datetime | None = None
    upper: datetime | None = None
    timezone: str = "UTC"

    @property
    def label(self) -> str:
        return partition_label(self.partition_schema, self.partition)

    @property
    def table_schema(self) -> str:
        return self.partition_schema or self.schema_name


@task(name="archive_partition", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def archive_partition(
    target: PostgresTarget,
    store: ArchiveStore,
    source: ArchiveSource,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    statement_timeout_ms: int = 600_000,
    spool_bytes: int = DEFAULT_SPOOL_BYTES,
    spool_dir: str | None = None,
) -> ArchiveRecord:
    """Archive a detached partition and prove the archive readable: COPY into zstd Parquet held
    in memory (in a temporary file beyond `spool_bytes`), upload it with its SHA-256 and, last,
    its manifest, then read both back from storage (`read_archive`): checksum and row count.

    A retry starts over. The manifest is the archive's commit mark, so a half-written archive is
    never taken for a finished one. Returns the verified archive; raises `ArchiveError` when what
    storage holds is not what was written, or when the key already holds the archive of another
    database's partition of the same name (never overwritten: nothing is dumped)."""
    database = database_of(target)
    _refuse_another_databases(store, source, database)
    with spool(spool_bytes, spool_dir) as body:
        dump = dump_table_to_parquet(
            target,
            source.table_schema,
            source.partition,
            source.key_column,
            body,
            batch_rows,
            statement_timeout_ms,
        )
        object_key, _ = archive_keys(source.schema_name, source.parent, source.label)
        manifest = Manifest(
            **source.model_dump(),
            **dump.model_dump(exclude={"seconds"}),
            object_key=object_key,
            database=database,
            created_at=datetime.now(UTC),
        )
        upload_archive(store, body, manifest)
    record = read_archive(store, source.schema_name, source.parent, source.label, spool_bytes)
    if record is None or record.manifest.sha256 != manifest.sha256:
        raise ArchiveError(
            f"the archive of {source.label} is not in storage as written (re-read after upload)"
        )
    return record


def database_of(target: PostgresTarget) -> str:
    """`host:port/dbname` of the database (no user or password): what a manifest records."""
    return target.resource_id().removeprefix("perfops.postgres.")


def _refuse_another_databases(store: ArchiveStore, source: ArchiveSource, database: str) -> None:
    """Raise `ArchiveError` when the archive's key holds a manifest of another database (two
    databases with the same table archiving to one place): overwriting it would lose the rows of
    a partition already dropped there."""
    object_key, manifest_key = archive_keys(source.schema_name, source.parent, source.label)
    if not object_exists(store, manifest_key):
        return
    try:
        existing = _read_manifest(store, manifest_key)
    except (ArchiveError, ChecksumMismatch):
        return  # an unreadable (partial, corrupted) manifest: written again
    if existing.database is not None and existing.database != database:
        raise ArchiveError(
            f"{object_location(store, object_key)} already holds the archive of "
            f"{existing.database}'s {source.label} ({existing.rows} rows): not overwritten with "
            f"{database}'s; give each database its own archive (another prefix or folder, or "
            "run them as one fleet)"
        )


def _keys(manifest: Manifest) -> tuple[str, str]:
    return archive_keys(
        manifest.schema_name,
        manifest.parent,
        partition_label(manifest.partition_schema, manifest.partition),
    )


def _read_manifest(store: ArchiveStore, manifest_key: str) -> Manifest:
    data = get_object.fn(store, manifest_key)
    try:
        return Manifest.model_validate_json(data)
    except ValueError as exc:
        raise ArchiveError(f"manifest {manifest_key} is not readable: {exc}") from None


@task(name="verify_archive", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def verify_archive(
    store: ArchiveStore,
    schema_name: str,
    parent: str,
    partition: str,
    spool_bytes: int = DEFAULT_SPOOL_BYTES,
) -> ArchiveRecord | None:
    """An archive an earlier run wrote, re-read from storage (`read_archive`)."""
    return read_archive(store, schema_name, parent, partition, spool_bytes)


def read_archive(
    store: ArchiveStore,
    schema_name: str,
    parent: str,
    partition: str,
    spool_bytes: int = DEFAULT_SPOOL_BYTES,
) -> ArchiveRecord | None:
    """Re-read an archive from storage: the manifest (its own checksum), then the whole object
    (its SHA-256 against the manifest's), and the Parquet row count against the manifest's.

    The object is read into memory up to `spool_bytes`, into a temporary file beyond. None when
    no manifest exists (never archived, or a run stopped before it finished). Raises
    `ChecksumMismatch`/`ArchiveError` when what is stored does not match.
    """
    object_key, manifest_key = archive_keys(schema_name, parent, partition)
    if not object_exists(store, manifest_key):
        return None
    manifest = _read_manifest(store, manifest_key)
    with spool(spool_bytes) as local:
        stored = get_stream(store, object_key, local)
        if stored.sha256 != manifest.sha256:
            raise ChecksumMismatch(
                f"{stored.location}: SHA-256 {stored.sha256} differs from the manifest's "
                f"{manifest.sha256}"
            )
        local.seek(0)
        parquet_rows = pq.ParquetFile(local).metadata.num_rows
    if parquet_rows != manifest.rows:
        raise ArchiveError(
            f"{stored.location} holds {parquet_rows} rows, its manifest says {manifest.rows}"
        )
    manifest_uri = stored.location.removesuffix(".parquet") + ".manifest.json"
    return ArchiveRecord(manifest=manifest, uri=stored.location, manifest_uri=manifest_uri)


def ensure_archive(
    target: PostgresTarget,
    store: ArchiveStore,
    source: ArchiveSource,
    settings: RotationSettings,
    workdir: str,
    fresh: bool = False,
) -> ArchiveRecord:
    """A verified archive of the detached table `source.partition`: reuse one that a crashed run
    finished if it matches the table's row count, otherwise dump, upload and verify. `fresh`:
    detached by this run, so no archive of it can be complete yet."""
    record = None
    if not fresh:
        try:
            record = verify_archive(
                store,
                source.schema_name,
                source.parent,
                source.label,
                settings.archive_memory_bytes,
            )
        except (ArchiveError, ChecksumMismatch):
            record = None  # a partial or corrupted archive: written again below
    if (
        record is not None
        and record.manifest.database in (None, database_of(target))
        and record.manifest.rows == count_rows(target, source.table_schema, source.partition)
    ):
        return record
    return archive_partition(
        target,
        store,
        source,
        settings.archive_batch_rows,
        settings.statement_timeout_ms,
        settings.archive_memory_bytes,
        workdir,
    )


# --------------------------------------------------------------------------- restore


def parse_archive_source(source: str) -> tuple[str, str]:
    """'s3://bucket/prefix/.../x.parquet' or a path -> (store root, object key). Accepts the
    Parquet object or its manifest."""
    key = source.removesuffix(".manifest.json").removesuffix(".parquet") + ".parquet"
    if source.startswith("s3://"):
        rest = key.removeprefix("s3://")
        bucket, _, object_key = rest.partition("/")
        if not bucket or not object_key:
            raise ConfigurationError(f"{source!r} is not s3://BUCKET/KEY")
        return f"s3://{bucket}", object_key
    path = Path(key)
    return str(path.parent), path.name


@task(name="fetch_archive", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_archive(store: ArchiveStore, object_key: str, dest: str) -> Manifest:
    """Download an archive and its manifest, verifying both checksums and the row count."""
    manifest_key = object_key.removesuffix(".parquet") + ".manifest.json"
    try:
        manifest = _read_manifest(store, manifest_key)
    except ConnectionFailed as exc:
        raise ArchiveError(
            f"cannot read the manifest {manifest_key}: {exc}; an archive is restored with its "
            "manifest"
        ) from exc
    stored = get_file(store, object_key, Path(dest))
    if stored.sha256 != manifest.sha256:
        raise ChecksumMismatch(
            f"{stored.location}: SHA-256 {stored.sha256} differs from the manifest's "
            f"{manifest.sha256}; refusing to restore"
        )
    rows = pq.ParquetFile(dest).metadata.num_rows
    if rows != manifest.rows:
        raise ArchiveError(
            f"{stored.location} holds {rows} rows, its manifest says {manifest.rows}"
        )
    return manifest


@task(name="load_archive", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def load_archive(
    target: PostgresTarget,
    manifest: Manifest,
    path: str,
    schema_name: str,
    table_name: str,
    attach: bool = False,
    lock_timeout_ms: int = 2_000,
    statement_timeout_ms: int = 600_000,
) -> int:
    """Load a verified archive into a new table `schema.table` (columns from the manifest), in one
    transaction; with `attach`, attach it to the manifest's parent with the manifest's bounds.
    The loaded row count must equal the manifest's or everything rolls back. Returns the rows."""
    table = sql.Identifier(schema_name, table_name)
    where = qualified_name(schema_name, table_name)
    with connect(target, autocommit=True) as conn:
        ensure_primary(conn, f"restore into {where}")
        set_timeouts(
            conn,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
            local=False,
        )
        conn.execute("select set_config('TimeZone', 'UTC', false)")
        exists = conn.execute("select to_regclass(%s) is not null as found", (where,)).fetchone()
        if exists and exists["found"]:
            raise ConfigurationError(
                f"{where} already exists: restore into another table (--table SCHEMA.NAME) "
                "or drop it first"
            )
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name),
                sql.SQL(_safe_type(c.type)),
                sql.SQL(" not null" if c.not_null else ""),
            )
            for c in manifest.columns
        )
        with conn.transaction():
            conn.execute(sql.SQL("create table {} ({})").format(table, columns))
            names = sql.SQL(", ").join(sql.Identifier(c.name) for c in manifest.columns)
            options = pacsv.WriteOptions(include_header=False)
            with (
                conn.cursor() as cur,
                cur.copy(
                    sql.SQL("copy {} ({}) from stdin (format csv)").format(table, names)
                ) as copy,
            ):
                for batch in pq.ParquetFile(path).iter_batches(batch_size=DEFAULT_BATCH_ROWS):
                    buffer = io.BytesIO()
                    pacsv.write_csv(pa.Table.from_batches([batch]), buffer, options)
                    copy.write(buffer.getvalue())
            counted = conn.execute(sql.SQL("select count(*) as n from {}").format(table)).fetchone()
            rows = int(counted["n"]) if counted else 0
            if rows != manifest.rows:
                raise ArchiveError(
                    f"loaded {rows} rows into {where} but the manifest says {manifest.rows}; "
                    "rolled back"
                )
            if attach:
                if manifest.lower is None or manifest.upper is None:
                    raise ConfigurationError(
                        "the manifest has no bounds: restore as a table (without --attach)"
                    )
                key_type = next(c.type for c in manifest.columns if c.name == manifest.key_column)
                parent = qualified_name(manifest.schema_name, manifest.parent)
                try:
                    conn.execute(
                        sql.SQL(
                            "alter table {} attach partition {} for values from ({}) to ({})"
                        ).format(
                            sql.Identifier(manifest.schema_name, manifest.parent),
                            table,
                            bound_literal(manifest.lower, _bare_type(key_type), manifest.timezone),
                            bound_literal(manifest.upper, _bare_type(key_type), manifest.timezone),
                        )
                    )
                except psycopg.Error as exc:  # the transaction rolls back: nothing was restored
                    raise ConfigurationError(
                        f"cannot attach {where} to {parent} for [{manifest.lower.isoformat()}, "
                        f"{manifest.upper.isoformat()}): {one_line(exc, empty='failed')}; "
                        "nothing was restored: "
                        + (
                            "rows of that range wait in its default partition (move them out "
                            "first), or restore without --attach"
                            if isinstance(exc, psycopg.errors.CheckViolation)
                            else "restore without --attach"
                        )
                    ) from None
    return rows


def _safe_type(pg_type: str) -> str:
    """A column type from a manifest, checked against format_type's shape before it becomes SQL
    (a manifest is data: it must not smuggle statements in)."""
    allowed = set('abcdefghijklmnopqrstuvwxyz0123456789 _(),[]".')
    if not pg_type or not set(pg_type.lower()) <= allowed or ";" in pg_type or "--" in pg_type:
        raise ArchiveError(f"the manifest has an unreadable column type {pg_type!r}")
    return pg_type
