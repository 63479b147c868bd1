"""The weekly report's archive: what one week's folder holds and what a run does with it. Pure:
no Prefect, no I/O (tasks.storage reads and writes).

A week's report lives under `reports/weekly/<week>/`: `index.html`, `charts/`, `data/` and,
written last, `manifest.json`: every file of that report with its size and SHA-256. The
manifest is the truth: a file under the folder that it does not list (left by an earlier run of
the same week, or by a run that stopped half-way) is not part of the report, and nothing reads
it as such. An archive written before manifests existed has only `index.html` (written last then
too): it is a complete report, its files are whatever the folder holds.

A run for a week that already has a report archived keeps it (`keep`) unless told to replace it
(`replace_archive`, CLI `--replace-archive`): a rerun of an old week after Prefect's event
retention trimmed its events, or without its Prometheus, builds a poorer report, and writing it
over the complete one would lose the complete one. Replacing writes the new files, then the new
manifest, reads the manifest back, and only then deletes the earlier report's files that the new
manifest does not list; it lists the folder again afterwards to verify that what is left is
exactly the new manifest's files.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
REPLACE_HINT = "pass --replace-archive (flow parameter replace_archive=true) to replace it"

ArchiveAction = Literal["write", "keep", "replace"]


class ManifestEntry(BaseModel):
    size: int
    sha256: str


class ReportManifest(BaseModel):
    """`manifest.json` of a week's archived report: the files that make it up (keys relative to
    the week's folder), written after all of them."""

    version: int = MANIFEST_VERSION
    week: str
    generated_at: datetime
    files: dict[str, ManifestEntry] = Field(default_factory=dict)

    def holds(self, name: str) -> bool:
        return name in self.files


class ArchivedReport(BaseModel):
    """What the archive holds for a week before a run writes anything."""

    link: str = Field(description="The link to its index.html.")
    manifest: ReportManifest | None = Field(
        default=None, description="None: archived before manifests (index.html alone)."
    )
    differing: list[str] = Field(
        default_factory=list,
        description="Files the manifest lists that are missing or whose recorded SHA-256 "
        "differs (a replacement that stopped half-way).",
    )

    def describe(self) -> str:
        when = (
            f" (generated {self.manifest.generated_at:%Y-%m-%d %H:%M} UTC)"
            if self.manifest is not None
            else ""
        )
        return f"{self.link}{when}"


class ArchivePlan(BaseModel):
    """What the run does with the week's archive, and the line that says so."""

    action: ArchiveAction
    line: str = Field(description="Said in the email, the artifact, the result and the event.")
    replacing: str = Field(default="", description="What a replacement replaces, after the link.")


def plan_archive(
    week: str, link: str, existing: ArchivedReport | None, replace: bool
) -> ArchivePlan:
    """Write when nothing is archived for `week`; keep what is there unless `replace`."""
    if existing is None:
        return ArchivePlan(action="write", line=f"archived at {link}")
    if not replace:
        damaged = (
            f"; {len(existing.differing)} of its files differ from its manifest "
            f"({', '.join(existing.differing[:3])}{', ...' if len(existing.differing) > 3 else ''})"
            if existing.differing
            else ""
        )
        return ArchivePlan(
            action="keep",
            line=f"archive kept: a report for {week} is already archived at "
            f"{existing.describe()}{damaged}; this one is not archived; {REPLACE_HINT}",
        )
    replacing = ", replacing the report archived there before" + (
        f" (generated {existing.manifest.generated_at:%Y-%m-%d %H:%M} UTC)"
        if existing.manifest is not None
        else ""
    )
    return ArchivePlan(action="replace", line=f"archived at {link}{replacing}", replacing=replacing)


def build_manifest(
    week: str, generated_at: datetime, stored: list[tuple[str, int, str]]
) -> ReportManifest:
    """The manifest of the files just written: (key relative to the week's folder, size,
    SHA-256)."""
    return ReportManifest(
        week=week,
        generated_at=generated_at,
        files={k: ManifestEntry(size=size, sha256=sha) for k, size, sha in sorted(stored)},
    )


def stale_files(listed: list[str], manifest: ReportManifest) -> list[str]:
    """Files under the week's folder that are not part of the report `manifest` describes (the
    manifest itself is part of it)."""
    return sorted(k for k in listed if k != MANIFEST and not manifest.holds(k))


def removal_line(removed: list[str]) -> str:
    if not removed:
        return ""
    shown = ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else "")
    return f"; removed {len(removed)} files of the earlier report not in this one: {shown}"
