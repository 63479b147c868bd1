"""What is missing on a system, and the command that fixes it; how a connection check reads.
Pure: no I/O, no Prefect."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from perfops.names import quote_ident
from perfops.redaction import one_line

Status = Literal["ok", "degraded", "unreachable"]


class ExtensionInfo(BaseModel):
    name: str
    available_version: str | None
    installed_version: str | None
    # installed in a schema off the role's search_path: (what, the fix); the flows that use its
    # bare names fail ("relation pg_stat_statements does not exist")
    off_path: tuple[str, str] | None = None


class PostgresInfo(BaseModel):
    """What a PostgreSQL server offers perfops."""

    server_version: str
    server_version_num: int
    database: str
    current_user: str
    is_superuser: bool
    can_create_extensions: bool
    in_recovery: bool
    shared_preload_libraries: list[str] | None  # None: this role may not read the setting
    reads_all_statements: bool = True  # superuser or pg_read_all_stats: every role's statements
    extensions: dict[str, ExtensionInfo]


class Finding(BaseModel):
    """Something perfops needs that a system lacks, with the fix."""

    what: str
    fix: str
    needed_by: str


class SystemCheck(BaseModel):
    """One row of the connection report."""

    system: str
    origin: str
    target: str
    status: Status
    version: str = ""
    detail: str = ""
    findings: list[Finding] = []

    @property
    def fixes(self) -> str:
        return "; ".join(f"{f.what} -> {f.fix}" for f in self.findings)


def check_from(
    system: str,
    origin: str,
    target: str,
    *,
    version: str = "",
    detail: str = "",
    findings: list[Finding] | None = None,
    error: BaseException | None = None,
    fix_when_unreachable: str = "",
) -> SystemCheck:
    """Assemble a check: unreachable on error, degraded when something is missing, else ok."""
    if error is not None:
        message = one_line(error)
        missing = (
            [Finding(what=message, fix=fix_when_unreachable, needed_by="every flow")]
            if fix_when_unreachable
            else []
        )
        return SystemCheck(
            system=system,
            origin=origin,
            target=target,
            status="unreachable",
            detail=message,
            findings=missing,
        )
    found = findings or []
    return SystemCheck(
        system=system,
        origin=origin,
        target=target,
        status="degraded" if found else "ok",
        version=version,
        detail=detail,
        findings=found,
    )


def postgres_findings(info: PostgresInfo) -> list[Finding]:
    """Findings for the PostgreSQL extensions and settings the perfops flows rely on."""
    major = info.server_version_num // 10_000
    findings: list[Finding] = []
    if info.shared_preload_libraries is None:
        findings.append(
            Finding(
                what=f"{info.current_user} may not read shared_preload_libraries, so whether "
                "pg_stat_statements is preloaded is not known",
                fix=f"GRANT pg_monitor TO {quote_ident(info.current_user)}; (docs/production.md)",
                needed_by="this check",
            )
        )
    elif "pg_stat_statements" not in info.shared_preload_libraries:
        findings.append(
            Finding(
                what="pg_stat_statements is not in shared_preload_libraries",
                fix="ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'; "
                "then restart PostgreSQL",
                needed_by="slow queries, index suggestions",
            )
        )
    packages = {
        "pg_stat_statements": f"postgresql-contrib (ships with postgresql-{major})",
        "hypopg": f"postgresql-{major}-hypopg",
        "pg_partman": f"postgresql-{major}-partman",
    }
    needed_by = {
        "pg_stat_statements": "slow queries, index suggestions",
        "hypopg": "index suggestions",
        "pg_partman": "partition rotation (adoption and comparison)",
    }
    for name, used_for in needed_by.items():
        ext = info.extensions.get(name)
        if ext is None or ext.available_version is None:
            findings.append(
                Finding(
                    what=f"extension {name} is not available on the server",
                    fix=f"apt-get install {packages[name]}",
                    needed_by=used_for,
                )
            )
        elif ext.installed_version is None:
            fix = (
                "CREATE SCHEMA IF NOT EXISTS partman; CREATE EXTENSION pg_partman SCHEMA partman;"
                if name == "pg_partman"
                else f"CREATE EXTENSION {name};"
            )
            if not info.can_create_extensions:
                fix += " (as a role with CREATE on the database)"
            findings.append(
                Finding(
                    what=f"extension {name} is not installed in database {info.database}",
                    fix=fix,
                    needed_by=used_for,
                )
            )
        elif ext.off_path is not None:
            findings.append(Finding(what=ext.off_path[0], fix=ext.off_path[1], needed_by=used_for))
    if not info.reads_all_statements:
        findings.append(
            Finding(
                what=f"pg_stat_statements hides other roles' statements from {info.current_user}",
                fix=f"GRANT pg_read_all_stats TO {quote_ident(info.current_user)};",
                needed_by="slow queries, index suggestions",
            )
        )
    if info.in_recovery:
        findings.append(
            Finding(
                what="the server is a replica (in recovery): perfops will only read",
                fix="point perfops at the primary to let it create indexes or rotate partitions",
                needed_by="index creation, statistics refresh, partition rotation",
            )
        )
    return findings
