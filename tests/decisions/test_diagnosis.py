"""What is missing, and the command that fixes it."""

from decisions.diagnosis import ExtensionInfo, PostgresInfo, check_from, postgres_findings


def _info(**overrides: object) -> PostgresInfo:
    base: dict[str, object] = {
        "server_version": "15.19",
        "server_version_num": 150019,
        "database": "app",
        "current_user": "perfops",
        "is_superuser": False,
        "can_create_extensions": True,
        "in_recovery": False,
        "shared_preload_libraries": ["pg_stat_statements"],
        "extensions": {
            "pg_stat_statements": ExtensionInfo(
                name="pg_stat_statements", available_version="1.10", installed_version="1.10"
            ),
            "hypopg": ExtensionInfo(
                name="hypopg", available_version="1.3.1", installed_version="1.3.1"
            ),
            "pg_partman": ExtensionInfo(
                name="pg_partman", available_version="4.7.2", installed_version="4.7.2"
            ),
        },
    }
    base.update(overrides)
    return PostgresInfo.model_validate(base)


def test_complete_server_has_no_findings() -> None:
    assert postgres_findings(_info()) == []


def test_missing_preload_says_how_to_fix() -> None:
    [finding] = postgres_findings(_info(shared_preload_libraries=[]))
    assert "shared_preload_libraries" in finding.what
    assert "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" in finding.fix


def test_unreadable_preload_and_hidden_statements_say_which_grant() -> None:
    unknown, hidden = postgres_findings(
        _info(shared_preload_libraries=None, reads_all_statements=False)
    )
    assert "may not read shared_preload_libraries" in unknown.what
    assert unknown.fix == "GRANT pg_monitor TO perfops; (docs/production.md)"
    assert hidden.fix == "GRANT pg_read_all_stats TO perfops;"


def test_a_grant_to_a_mixed_case_role_names_it_quoted() -> None:
    """`GRANT pg_monitor TO Perf-Ops;` is a syntax error, and `TO PerfOps` grants the role
    perfops (if there is one), not PerfOps: the fix names the role as PostgreSQL reads it."""
    for role, quoted in (("PerfOps", '"PerfOps"'), ('perf "ops"', '"perf ""ops"""')):
        unknown, hidden = postgres_findings(
            _info(current_user=role, shared_preload_libraries=None, reads_all_statements=False)
        )
        assert unknown.fix == f"GRANT pg_monitor TO {quoted}; (docs/production.md)"
        assert hidden.fix == f"GRANT pg_read_all_stats TO {quoted};"


def test_unavailable_extension_names_the_debian_package() -> None:
    info = _info()
    info.extensions["hypopg"] = ExtensionInfo(
        name="hypopg", available_version=None, installed_version=None
    )
    [finding] = postgres_findings(info)
    assert finding.fix == "apt-get install postgresql-15-hypopg"


def test_available_but_not_installed_extension_gives_create_extension() -> None:
    info = _info(can_create_extensions=False)
    info.extensions["pg_partman"] = ExtensionInfo(
        name="pg_partman", available_version="4.7.2", installed_version=None
    )
    [finding] = postgres_findings(info)
    assert "CREATE EXTENSION pg_partman SCHEMA partman" in finding.fix
    assert "as a role with CREATE" in finding.fix
    assert "database app" in finding.what


def test_replica_is_reported() -> None:
    [finding] = postgres_findings(_info(in_recovery=True))
    assert "replica" in finding.what


def test_check_status_follows_error_and_findings() -> None:
    assert check_from("redis", "block", "r", version="7").status == "ok"
    down = check_from(
        "redis",
        "block",
        "r",
        error=ConnectionError("refused\nmore"),
        fix_when_unreachable="start it",
    )
    assert (down.status, down.detail, down.findings[0].fix) == (
        "unreachable",
        "refused",
        "start it",
    )
    degraded = check_from(
        "postgres", "block", "p", findings=postgres_findings(_info(in_recovery=True))
    )
    assert degraded.status == "degraded"
