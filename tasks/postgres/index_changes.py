"""The only place perfops drops indexes: `DROP INDEX CONCURRENTLY`, one index at a time.

For each index it was asked to drop (findings of `decisions.index_health`, named by a person):

1. refuse on a replica (`pg_is_in_recovery()`);
2. take a Postgres advisory lock for the table (`perfops` DDL on one table never overlaps);
3. re-check inside the lock that the index still exists and still matches the finding: same
   definition, no constraint depends on it, not the table's replica identity, not a partitioned
   index or a partition of one, still no scans for an unused one, and the index kept in its
   place still there and valid for a duplicate or covered one;
4. `DROP INDEX CONCURRENTLY IF EXISTS` in autocommit (CONCURRENTLY cannot run in a transaction)
   under `lock_timeout` and `statement_timeout`;
5. verify it is gone.

A failure on one index (a lock held by another session, a timeout, a permission) is recorded with
its reason and the next index is tried. Rerunning is safe: an index gone since the check is
"already gone" (one gone before the check is "not found" by `select_drops`), and an index an
interrupted `DROP INDEX CONCURRENTLY` left invalid is dropped the next time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, LiteralString

import psycopg
from prefect import task
from psycopg import errors as pg_errors
from psycopg import sql

from blocks import PostgresTarget
from decisions.index_health import DropOutcome, DropStatus, IndexFinding, qualified_name
from perfops.errors import LockBusy, ReadOnlyServer
from perfops.redaction import one_line
from tasks.postgres.server import advisory_lock, connect, ensure_primary
from tasks.transient_errors import RETRY_DEFAULTS

_STATE_QUERY: LiteralString = """
    select i.oid, i.relkind, x.indisvalid as is_valid, x.indisreplident as is_replica_identity,
           coalesce(s.idx_scan, 0) as scans,
           (select string_agg(format('%%I (%%s)', c.conname, c.contype), ', ')
              from pg_constraint c where c.conindid = i.oid) as constraints,
           (select p.inhparent::regclass::text
              from pg_inherits p where p.inhrelid = i.oid) as parent_index
    from pg_class i
    join pg_namespace n on n.oid = i.relnamespace
    join pg_index x on x.indexrelid = i.oid
    left join pg_stat_user_indexes s on s.indexrelid = i.oid
    where n.nspname = %s and i.relname = %s and i.relkind in ('i', 'I')
"""


def lock_name(schema: str, table: str) -> str:
    """The advisory lock perfops holds while changing a table's indexes: the same one the index
    advisor's builds take (`tasks.postgres.index_builds`), so a build and a drop on one table never
    overlap."""
    return f"index-build:{schema}.{table}"


@task(name="drop_indexes", **RETRY_DEFAULTS)
def drop_indexes(
    target: PostgresTarget,
    findings: Sequence[IndexFinding],
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
) -> list[DropOutcome]:
    """Drop each finding's index `CONCURRENTLY` after re-checking it; one outcome per finding."""
    if not findings:
        return []
    with connect(
        target,
        autocommit=True,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
    ) as conn:
        try:
            ensure_primary(conn, "drop indexes")
        except ReadOnlyServer as exc:
            return [_outcome(f, "refused", str(exc)) for f in findings]
        outcomes = []
        for finding in findings:
            outcomes.append(_drop_one(conn, finding, lock_timeout_ms, statement_timeout_ms))
            if conn.broken:
                outcomes.extend(
                    _outcome(f, "failed", "the connection was lost; nothing more was tried")
                    for f in findings[len(outcomes) :]
                )
                break
    return outcomes


def _drop_one(
    conn: psycopg.Connection[Any],
    finding: IndexFinding,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
) -> DropOutcome:
    try:
        with advisory_lock(conn, lock_name(finding.schema_name, finding.table_name)):
            state = _state(conn, finding.schema_name, finding.index_name)
            if state is None:
                return _outcome(finding, "already gone", "the index no longer exists")
            refusal = _refusal(conn, finding, state)
            if refusal:
                return _outcome(finding, "refused", refusal)
            started = time.monotonic()
            conn.execute(
                sql.SQL("drop index concurrently if exists {}").format(
                    sql.Identifier(finding.schema_name, finding.index_name)
                )
            )
            seconds = time.monotonic() - started
            if _state(conn, finding.schema_name, finding.index_name) is not None:
                return _outcome(finding, "failed", "the index is still there after DROP INDEX")
            return _outcome(
                finding,
                "dropped",
                f"{finding.kind}: {finding.reason}",
                seconds=seconds,
            )
    except LockBusy as exc:
        return _outcome(finding, "failed", f"{exc}")
    except pg_errors.LockNotAvailable:
        what = (
            f"table {finding.table} is locked by another session (or a transaction using it "
            f"did not finish): lock_timeout ({lock_timeout_ms:,} ms) expired"
        )
        return _outcome(finding, "failed", what + _left_behind(conn, finding))
    except pg_errors.QueryCanceled:
        what = f"statement_timeout ({statement_timeout_ms:,} ms) expired"
        return _outcome(finding, "failed", what + _left_behind(conn, finding))
    except psycopg.Error as exc:
        return _outcome(finding, "failed", one_line(exc) + _left_behind(conn, finding))


def _state(conn: psycopg.Connection[Any], schema: str, index: str) -> dict[str, Any] | None:
    """The index as it is now (no table lock needed), or None when it does not exist."""
    row = conn.execute(_STATE_QUERY, (schema, index)).fetchone()
    return dict(row) if row is not None else None


def _definition(conn: psycopg.Connection[Any], oid: int) -> str:
    """pg_get_indexdef (it takes ACCESS SHARE on the table: subject to lock_timeout)."""
    row = conn.execute("select pg_get_indexdef(%s::oid) as definition", (oid,)).fetchone()
    assert row is not None
    return str(row["definition"])


def _refusal(conn: psycopg.Connection[Any], finding: IndexFinding, state: dict[str, Any]) -> str:
    """Why the index must not be dropped now (empty when it may be)."""
    if state["constraints"]:
        return (
            f"constraint {state['constraints']} depends on it: drop or change the constraint "
            "with ALTER TABLE instead"
        )
    if state["is_replica_identity"]:
        return (
            f"it is the replica identity of {finding.table} (without it UPDATE and DELETE fail "
            "on a published table): change the table's REPLICA IDENTITY first"
        )
    if state["relkind"] == "I":
        return "it is a partitioned index: DROP INDEX CONCURRENTLY cannot drop it"
    if state["parent_index"]:
        return f"it is a partition of index {state['parent_index']}: drop that index instead"
    definition = _definition(conn, state["oid"])
    if definition != finding.definition:
        return f"its definition changed since the check (now: {definition})"
    if finding.kind == "unused" and state["scans"] > finding.scans:
        return f"it was scanned {state['scans'] - finding.scans} times since the check"
    if finding.kind in ("duplicate", "covered"):
        assert finding.other_schema is not None and finding.other_index_name is not None
        other = _state(conn, finding.other_schema, finding.other_index_name)
        if other is None:
            return f"the index kept in its place, {finding.other_index}, no longer exists"
        if not other["is_valid"]:
            return f"the index kept in its place, {finding.other_index}, is not valid"
        if _definition(conn, other["oid"]) != finding.other_definition:
            return f"the index kept in its place, {finding.other_index}, changed since the check"
    return ""


def _left_behind(conn: psycopg.Connection[Any], finding: IndexFinding) -> str:
    """After a failed drop: an interrupted DROP INDEX CONCURRENTLY may leave the index invalid."""
    if conn.broken:
        return ""
    try:
        state = _state(conn, finding.schema_name, finding.index_name)
    except psycopg.Error:
        return ""
    if state is None:
        return "; the index is gone"
    if not state["is_valid"] and finding.kind != "invalid":
        return (
            "; the index is left INVALID (queries no longer use it): rerun with "
            f"--apply --drop {finding.name} to finish"
        )
    return "; nothing was dropped"


def _outcome(
    finding: IndexFinding, status: DropStatus, reason: str, *, seconds: float | None = None
) -> DropOutcome:
    return DropOutcome(
        requested=qualified_name(finding.schema_name, finding.index_name),
        name=finding.name,
        status=status,
        reason=reason,
        size_bytes=finding.size_bytes,
        seconds=seconds,
    )
