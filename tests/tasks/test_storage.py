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

from blocks.resolve import resolve_archive
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
