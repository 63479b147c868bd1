"""decisions.report_archive: what a run does with a week's archived report. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from decisions.report_archive import (
    ArchivedReport,
    ManifestEntry,
    ReportManifest,
    build_manifest,
    plan_archive,
    removal_line,
    stale_files,
)

LINK = "s3://archive/reports/weekly/2026-W47/index.html"
EARLIER = ReportManifest(
    week="2026-W47",
    generated_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
    files={
        "index.html": ManifestEntry(size=10, sha256="a"),
        "data/fleet.csv": ManifestEntry(size=5, sha256="b"),
    },
)


def test_nothing_archived_is_written() -> None:
    plan = plan_archive("2026-W47", LINK, None, replace=False)
    assert plan.action == "write" and plan.line == f"archived at {LINK}"


def test_a_report_already_archived_is_kept_unless_told_and_the_line_says_how_to_replace() -> None:
    existing = ArchivedReport(link=LINK, manifest=EARLIER)
    plan = plan_archive("2026-W47", LINK, existing, replace=False)
    assert plan.action == "keep"
    assert plan.line == (
        f"archive kept: a report for 2026-W47 is already archived at {LINK} (generated "
        "2026-11-23 08:00 UTC); this one is not archived; pass --replace-archive (flow "
        "parameter replace_archive=true) to replace it"
    )
    replaced = plan_archive("2026-W47", LINK, existing, replace=True)
    assert (
        replaced.action == "replace" and replaced.line == f"archived at {LINK}{replaced.replacing}"
    )
    assert replaced.line == (
        f"archived at {LINK}, replacing the report archived there before (generated "
        "2026-11-23 08:00 UTC)"
    )


def test_an_archive_from_before_manifests_is_a_report_too_and_damage_is_named() -> None:
    legacy = plan_archive("2026-W47", LINK, ArchivedReport(link=LINK), replace=False)
    assert legacy.action == "keep" and f"already archived at {LINK}; this one" in legacy.line
    damaged = ArchivedReport(link=LINK, manifest=EARLIER, differing=["index.html"])
    line = plan_archive("2026-W47", LINK, damaged, replace=False).line
    assert "; 1 of its files differ from its manifest (index.html); this one is not" in line


def test_files_the_new_manifest_does_not_list_are_stale() -> None:
    new = build_manifest(
        "2026-W47", datetime(2026, 12, 7, tzinfo=UTC), [("index.html", 12, "c"), ("x.csv", 1, "d")]
    )
    assert list(new.files) == ["index.html", "x.csv"]
    listed = ["data/fleet.csv", "index.html", "manifest.json", "x.csv"]
    assert stale_files(listed, new) == ["data/fleet.csv"]
    assert removal_line(["data/fleet.csv"]) == (
        "; removed 1 files of the earlier report not in this one: data/fleet.csv"
    )
    assert removal_line([]) == ""
