"""restore_partition: load an archived partition back from its Parquet object and manifest.
CLI `perfops partitions restore`.

The manifest and the object are read from storage and their SHA-256 checked; the object's row
count must equal the manifest's. The rows go into a new table (columns and types from the
manifest) in one transaction, counted again; with `attach`, the table is attached back to the
manifest's parent with the manifest's bounds. Nothing existing is overwritten.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.filesystems import LocalFileSystem
from pydantic import BaseModel

from blocks.resolve import ArchiveStore, resolve_archive_store, resolve_postgres
from decisions.partitioning import split_table
from perfops.errors import ConfigurationError
from perfops.redaction import install_log_redaction
from tasks.partition_archives import fetch_archive, load_archive, parse_archive_source
from tasks.records import emit, publish_table

ARTIFACT_KEY = "perfops-partitions-restore"


class RestoreReport(BaseModel):
    source: str
    table: str
    rows: int
    sha256: str
    attached_to: str | None
    lower: str | None
    upper: str | None


def store_for(source: str) -> tuple[ArchiveStore, str]:
    """(store, object key) for 's3://bucket/key.parquet' or a local path."""
    root, key = parse_archive_source(source)
    if root.startswith("s3://"):
        return resolve_archive_store(root).value, key
    if not Path(root).is_dir():
        raise ConfigurationError(f"{root} is not a folder holding the archive {key}")
    return LocalFileSystem(basepath=str(Path(root).resolve())), key


@flow(
    name="restore_partition",
    description="Load an archived partition back (checksums and row counts verified) as a "
    "table or a reattached partition.",
    log_prints=False,
)
def restore_partition(
    source: str,
    table: str | None = None,
    attach: bool = False,
    postgres_block: str | None = None,
) -> RestoreReport:
    """Restore one archive.

    Args:
        source: the archive's Parquet object or manifest: s3://bucket/key or a local path.
        table: schema.table to create (default: the archived partition's own name).
        attach: attach the restored table to the manifest's parent with its original bounds.
        postgres_block: a `perfops-postgres-target` block (default: PERFOPS_DSN).
    """
    install_log_redaction()
    into: tuple[str, str] | None = None
    if table is not None:
        try:
            into = split_table(table)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    pg = resolve_postgres(postgres_block)
    store, key = store_for(source)
    with tempfile.TemporaryDirectory(prefix="perfops-restore-") as tmp:
        path = str(Path(tmp) / "archive.parquet")
        manifest = fetch_archive(store, key, path)
        schema_name, table_name = into or (
            manifest.partition_schema or manifest.schema_name,
            manifest.partition,
        )
        rows = load_archive(pg.value, manifest, path, schema_name, table_name, attach)
    report = RestoreReport(
        source=source,
        table=f"{schema_name}.{table_name}",
        rows=rows,
        sha256=manifest.sha256,
        attached_to=f"{manifest.schema_name}.{manifest.parent}" if attach else None,
        lower=manifest.lower.isoformat() if manifest.lower else None,
        upper=manifest.upper.isoformat() if manifest.upper else None,
    )
    get_run_logger().info("restored %d rows into %s", rows, report.table)
    publish_table(
        ARTIFACT_KEY,
        [
            {
                "table": report.table,
                "result": f"restored {rows} rows"
                + (f", attached to {report.attached_to}" if report.attached_to else ""),
                "reason": "SHA-256 and row count verified against the manifest",
            }
            | report.model_dump(exclude={"table"})
        ],
        f"Restored {rows} rows from {source} (SHA-256 verified) into {report.table}"
        + (f", attached to {report.attached_to}" if attach else ""),
    )
    emit(
        "perfops.partitions.restored",
        f"{pg.value.resource_id()}/{report.table}",
        report.model_dump(),
    )
    return report
