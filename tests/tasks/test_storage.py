"""Archive storage: S3 (moto's server) and a local folder, with SHA-256 checksums."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import boto3
import pytest
from prefect.filesystems import LocalFileSystem
from prefect_aws import S3Bucket

from blocks.resolve import ArchiveStore, resolve_archive
from perfops.errors import ChecksumMismatch, ConnectionFailed
from perfops.settings import PerfopsSettings
from tasks import storage
from tasks.storage import get_object, probe_archive, put_object
from tests.servers import MotoServer

pytestmark = pytest.mark.usefixtures("prefect_harness")

PAYLOAD = b"partition audit_logs_p2025_10\n" * 1000


def _bucket(moto_server: MotoServer, name: str):  # type: ignore[no-untyped-def]
    s3 = boto3.client("s3", **moto_server.client_kwargs())
    s3.create_bucket(Bucket=name)
    settings = PerfopsSettings(
        s3_bucket=name, s3_prefix="archive", s3_endpoint_url=moto_server.endpoint_url
    )
    resolved = resolve_archive(settings=settings)
    assert resolved.origin == "environment"
    return s3, resolved.value


def test_s3_round_trip_with_checksum(moto_server: MotoServer) -> None:
    s3, bucket = _bucket(moto_server, "perfops-roundtrip")
    stored = put_object(bucket, "audit_logs/2025-10.bin", PAYLOAD)
    assert stored.location == "s3://perfops-roundtrip/archive/audit_logs/2025-10.bin"
    assert stored.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    head = s3.head_object(
        Bucket="perfops-roundtrip", Key="archive/audit_logs/2025-10.bin", ChecksumMode="ENABLED"
    )
    assert head["Metadata"]["sha256"] == stored.sha256
    assert "ChecksumSHA256" in head  # the server stored and checked its own SHA-256
    assert get_object(bucket, "audit_logs/2025-10.bin") == PAYLOAD


def test_a_fleet_targets_folder_holds_its_keys_in_s3_and_in_a_folder(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    _, bucket = _bucket(moto_server, "perfops-fleet-folder")
    orders = storage.in_folder(bucket, "orders")
    stored = put_object(orders, "public/audit_logs/p.parquet", PAYLOAD)
    assert stored.location == "s3://perfops-fleet-folder/archive/orders/public/audit_logs/p.parquet"
    assert bucket.bucket_folder == "archive"  # the shared store itself is unchanged
    bare = bucket.model_copy(update={"bucket_folder": ""})
    assert storage.object_location(storage.in_folder(bare, "orders"), "k") == (
        "s3://perfops-fleet-folder/orders/k"
    )
    folder = storage.in_folder(LocalFileSystem(basepath=str(tmp_path)), "billing")
    assert put_object(folder, "public/audit_logs/p.parquet", PAYLOAD).location == str(
        tmp_path / "billing/public/audit_logs/p.parquet"
    )
    assert get_object(folder, "public/audit_logs/p.parquet") == PAYLOAD


def test_s3_object_changed_behind_our_back_is_refused(moto_server: MotoServer) -> None:
    s3, bucket = _bucket(moto_server, "perfops-tamper")
    stored = put_object(bucket, "x.bin", PAYLOAD)
    s3.put_object(
        Bucket="perfops-tamper",
        Key="archive/x.bin",
        Body=b"truncated",
        Metadata={"sha256": stored.sha256},
    )
    with pytest.raises(ChecksumMismatch, match="differs"):
        get_object.fn(bucket, "x.bin")


def test_folder_round_trip_and_corruption(tmp_path: Path) -> None:
    store = LocalFileSystem(basepath=str(tmp_path))
    stored = put_object(store, "audit_logs/2025-10.bin", PAYLOAD)
    assert Path(stored.location).read_bytes() == PAYLOAD
    assert (tmp_path / "audit_logs/2025-10.bin.sha256").read_text().split()[0] == stored.sha256
    assert get_object(store, "audit_logs/2025-10.bin") == PAYLOAD
    (tmp_path / "audit_logs/2025-10.bin").write_bytes(PAYLOAD[:-1])
    with pytest.raises(ChecksumMismatch):
        get_object.fn(store, "audit_logs/2025-10.bin")


def test_folder_object_without_checksum_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "stray.bin").write_bytes(b"x")
    with pytest.raises(ChecksumMismatch, match="no recorded SHA-256"):
        get_object.fn(LocalFileSystem(basepath=str(tmp_path)), "stray.bin")


def test_the_probe_gives_up_on_an_endpoint_that_never_answers_with_its_own_timeout(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections and never answers: the probe fails on its own short
    read timeout (each of the block's attempts), naming the upload, not on the block's 60 s
    sized for archives; a probe of a working bucket still writes, reads back and deletes.
    (Its own timeout is 1 s here, 5 s in production, so that the test takes seconds.)"""
    monkeypatch.setattr(storage, "PROBE_TIMEOUT_S", 1)
    _, bucket = _bucket(moto_server, "perfops-probe-ok")
    assert probe_archive.fn(bucket) == "wrote, read back and deleted a 22-byte probe"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        settings = PerfopsSettings(
            s3_bucket="perfops-silent",
            s3_endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
        )
        hung = resolve_archive(settings=settings).value
        assert isinstance(hung, S3Bucket)
        assert (hung.credentials.aws_client_parameters.config or {})["read_timeout"] == 60
        config = hung.credentials.aws_client_parameters.config or {}
        config["retries"] = {"mode": "standard", "max_attempts": 2}  # the block's, kept short
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"S3 upload of s3://perfops-silent/.* failed: "):
            probe_archive.fn(hung)
        # two attempts on the block's own 60 s read timeout would take two minutes
        assert time.monotonic() - started < 30
        # the block keeps its own timeouts: the probe's are on a copy
        assert (hung.credentials.aws_client_parameters.config or {})["read_timeout"] == 60


def _stores(moto_server: MotoServer, tmp_path: Path, name: str) -> list[ArchiveStore]:
    _, bucket = _bucket(moto_server, name)
    return [bucket, LocalFileSystem(basepath=str(tmp_path / "archive"))]


def test_a_replaced_report_keeps_only_its_manifests_files_in_s3_and_in_a_folder(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """A rerun of a week wrote its files over the earlier run's and left the earlier run's
    other files (a fleet run's data/fleet.csv) in the folder, read as part of the report."""
    from datetime import UTC, datetime

    from tasks.storage import (
        archive_report,
        find_archived_report,
        list_keys,
        read_report_manifest,
        remove_stale_files,
    )

    prefix = "reports/weekly/2026-W40"
    first = {"index.html": b"<html>fleet</html>", "data/fleet.csv": b"target\nbilling\n"}
    second = {"index.html": b"<html>poorer</html>", "data/targets.csv": b"target\n"}
    for store in _stores(moto_server, tmp_path, "perfops-report-replace"):
        assert find_archived_report(store, prefix) is None
        archive_report(store, prefix, first, "2026-W40", datetime(2026, 10, 5, 8, tzinfo=UTC))
        found = find_archived_report(store, prefix)
        assert found is not None and found.manifest is not None and found.differing == []
        assert sorted(found.manifest.files) == ["data/fleet.csv", "index.html"]
        _, manifest = archive_report(
            store, prefix, second, "2026-W40", datetime(2026, 12, 7, tzinfo=UTC)
        )
        # Before the removal the earlier report's file is still there, not in the manifest.
        assert "data/fleet.csv" in list_keys(store, prefix)
        assert not read_report_manifest(store, prefix).holds("data/fleet.csv")
        assert remove_stale_files(store, prefix, manifest) == ["data/fleet.csv"]
        assert list_keys(store, prefix) == ["data/targets.csv", "index.html", "manifest.json"]
        assert get_object(store, f"{prefix}/index.html") == b"<html>poorer</html>"
        assert remove_stale_files(store, prefix, manifest) == []  # idempotent


def test_stale_files_are_not_deleted_unless_the_manifest_read_back_is_the_new_one(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from tasks.storage import ArchiveInconsistent, archive_report, list_keys, remove_stale_files

    prefix = "reports/weekly/2026-W41"
    for store in _stores(moto_server, tmp_path, "perfops-report-verify"):
        put_object(store, f"{prefix}/data/fleet.csv", b"left by an earlier run\n")
        _, ours = archive_report(
            store, prefix, {"index.html": b"a"}, "2026-W41", datetime(2026, 12, 7, tzinfo=UTC)
        )
        # Another run replaced the week meanwhile: its manifest is not ours.
        archive_report(
            store, prefix, {"index.html": b"b"}, "2026-W41", datetime(2026, 12, 8, tzinfo=UTC)
        )
        with pytest.raises(ArchiveInconsistent, match="is not the manifest just written"):
            remove_stale_files(store, prefix, ours)
        assert "data/fleet.csv" in list_keys(store, prefix)  # nothing deleted


def test_an_archive_whose_files_no_longer_match_its_manifest_is_named(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """A replacement that stopped after some files: the old manifest, new files."""
    from datetime import UTC, datetime

    from tasks.storage import archive_report, find_archived_report

    prefix = "reports/weekly/2026-W42"
    for store in _stores(moto_server, tmp_path, "perfops-report-damaged"):
        archive_report(
            store, prefix, {"index.html": b"old"}, "2026-W42", datetime(2026, 10, 19, tzinfo=UTC)
        )
        put_object(store, f"{prefix}/index.html", b"half of a replacement")
        found = find_archived_report(store, prefix)
        assert found is not None and found.differing == ["index.html"]
        legacy = "reports/weekly/2026-W43"  # archived before manifests: the page alone
        put_object(store, f"{legacy}/index.html", b"legacy")
        old = find_archived_report(store, legacy)
        assert old is not None and old.manifest is None
