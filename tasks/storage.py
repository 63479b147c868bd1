"""Archive storage tasks: put and get objects with a SHA-256 checksum, on S3 (prefect-aws
`S3Bucket`) or a local folder (Prefect `LocalFileSystem`); where an object is and the link a
person opens; a report's files archived together with their manifest (the report already
archived for a week found, and after a replacement the earlier report's files the new manifest
does not list removed, verified), or copied to a browsable folder; a probe that proves a store
accepts a write, a read and a delete before anything depends on it.

On S3 the checksum travels as `ChecksumSHA256`, so the server itself rejects a corrupted upload,
and is also kept in the object's metadata; on a folder it sits beside the file as `NAME.sha256`.
A read recomputes it and raises `ChecksumMismatch` when the bytes differ.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import LocalFileSystem
from prefect_aws import S3Bucket
from pydantic import BaseModel

from blocks.resolve import ArchiveStore
from decisions.report_archive import (
    MANIFEST,
    ArchivedReport,
    ReportManifest,
    build_manifest,
    stale_files,
)
from perfops.errors import ChecksumMismatch, ConnectionFailed, PerfopsError
from perfops.redaction import one_line


class StoredObject(BaseModel):
    """Where an object went and its checksum."""

    key: str
    location: str
    size: int
    sha256: str


def _s3_key(bucket: S3Bucket, key: str) -> str:
    folder = bucket.bucket_folder.strip("/")
    return f"{folder}/{key}" if folder else key


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _folder_path(store: LocalFileSystem, key: str) -> Path:
    """Where `key` lives in a folder store."""
    return Path(store.basepath or ".") / key


def in_folder(store: ArchiveStore, folder: str) -> ArchiveStore:
    """`store` with every key under `folder`: a fleet target's own part of an archive the
    fleet's targets share (their tables, and so their keys, have the same names)."""
    if isinstance(store, S3Bucket):
        base = store.bucket_folder.strip("/")
        return store.model_copy(update={"bucket_folder": f"{base}/{folder}" if base else folder})
    return store.model_copy(update={"basepath": str(Path(store.basepath or ".") / folder)})


def object_location(store: ArchiveStore, key: str) -> str:
    """Where `key` is (or will be) stored: its s3:// URI, or its path in the folder."""
    if isinstance(store, S3Bucket):
        return f"s3://{store.bucket_name}/{_s3_key(store, key)}"
    return str(_folder_path(store, key))


def object_link(store: ArchiveStore, key: str) -> str:
    """The link a person opens for `key`: its s3:// URI, or a file:// URI in a folder."""
    location = object_location(store, key)
    if isinstance(store, LocalFileSystem):
        return Path(location).resolve().as_uri()
    return location


def _s3_put(bucket: S3Bucket, key: str, body: Any, digest: str) -> str:
    """Upload `body` (bytes or a binary file) with its SHA-256 checked by S3; its s3:// URI."""
    s3_key = _s3_key(bucket, key)
    try:
        bucket.credentials.get_s3_client().put_object(
            Bucket=bucket.bucket_name,
            Key=s3_key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
            Metadata={"sha256": digest},
        )
    except (ClientError, BotoCoreError) as exc:
        raise ConnectionFailed(
            f"S3 upload of s3://{bucket.bucket_name}/{s3_key} failed: {exc}"
        ) from exc
    return f"s3://{bucket.bucket_name}/{s3_key}"


@task(name="put_archive_object")
def put_object(store: ArchiveStore, key: str, data: bytes) -> StoredObject:
    """Write `data` under `key` with its SHA-256 checksum."""
    digest = _sha256(data)
    if isinstance(store, S3Bucket):
        location = _s3_put(store, key, data, digest)
    else:
        path = _folder_path(store, key)
        store.write_path(key, data)
        Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
        location = str(path)
    return StoredObject(key=key, location=location, size=len(data), sha256=digest)


@task(name="get_archive_object")
def get_object(store: ArchiveStore, key: str) -> bytes:
    """Read `key` back and verify it against the checksum recorded when it was written."""
    if isinstance(store, S3Bucket):
        s3_key = _s3_key(store, key)
        try:
            response = store.credentials.get_s3_client().get_object(
                Bucket=store.bucket_name, Key=s3_key, ChecksumMode="ENABLED"
            )
        except (ClientError, BotoCoreError) as exc:
            raise ConnectionFailed(
                f"S3 download of s3://{store.bucket_name}/{s3_key} failed: {exc}"
            ) from exc
        data = response["Body"].read()
        expected = response.get("Metadata", {}).get("sha256")
        where = f"s3://{store.bucket_name}/{s3_key}"
        server_sum = response.get("ChecksumSHA256")
        if expected and server_sum and base64.b64decode(server_sum).hex() != expected:
            raise ChecksumMismatch(
                f"{where}: the server's SHA-256 {base64.b64decode(server_sum).hex()} differs "
                f"from the recorded {expected}"
            )
    else:
        assert isinstance(store, LocalFileSystem)
        data = cast(bytes, store.read_path(key))
        path = _folder_path(store, key)
        sidecar = Path(f"{path}.sha256")
        expected = sidecar.read_text().split()[0] if sidecar.exists() else None
        where = str(path)
    actual = _sha256(data)
    if expected is None:
        raise ChecksumMismatch(f"{where} has no recorded SHA-256; refusing to trust it")
    if actual != expected:
        raise ChecksumMismatch(f"{where}: SHA-256 {actual} differs from recorded {expected}")
    return data


_CHUNK = 1 << 20


def stream_digest(body: IO[bytes]) -> tuple[str, int]:
    """(SHA-256, size) of a seekable binary file from its start, read in 1 MiB chunks; leaves it
    at 0."""
    digest = hashlib.sha256()
    size = 0
    body.seek(0)
    for chunk in iter(lambda: body.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    body.seek(0)
    return digest.hexdigest(), size


def put_stream(store: ArchiveStore, key: str, body: IO[bytes], sha256: str) -> StoredObject:
    """Upload a seekable binary file (from its start) under `key` with its SHA-256, streamed.

    A plain function, for tasks that upload as one step of their own. S3 itself checks `sha256`
    (`ChecksumSHA256`); the folder store hashes while it copies and refuses a mismatch. The body
    is rewound first, so a retried upload sends the whole object again.
    """
    body.seek(0, 2)
    size = body.tell()
    body.seek(0)
    if isinstance(store, S3Bucket):
        location = _s3_put(store, key, body, sha256)
    else:
        target = _folder_path(store, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        with partial.open("wb") as dst:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{target}: the bytes written hash to {digest.hexdigest()}, not {sha256}"
            )
        Path(f"{target}.sha256").write_text(f"{sha256}  {target.name}\n")
        partial.replace(target)  # the object appears whole or not at all
        location = str(target)
    return StoredObject(key=key, location=location, size=size, sha256=sha256)


def get_stream(store: ArchiveStore, key: str, sink: IO[bytes]) -> StoredObject:
    """Download `key` into the binary file `sink` (streamed, from the sink's start) and verify it
    against its recorded SHA-256.

    Raises `ChecksumMismatch` when the bytes differ or no checksum was recorded, and
    `ConnectionFailed` when the object cannot be read (missing, storage down).
    """
    digest = hashlib.sha256()
    size = 0
    sink.seek(0)
    sink.truncate()
    if isinstance(store, S3Bucket):
        s3_key = _s3_key(store, key)
        where = f"s3://{store.bucket_name}/{s3_key}"
        try:
            response = store.credentials.get_s3_client().get_object(
                Bucket=store.bucket_name, Key=s3_key, ChecksumMode="ENABLED"
            )
            for chunk in response["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise ConnectionFailed(f"S3 download of {where} failed: {exc}") from exc
        expected = response.get("Metadata", {}).get("sha256")
    else:
        source = _folder_path(store, key)
        where = str(source)
        if not source.exists():
            raise ConnectionFailed(f"{where} does not exist")
        with source.open("rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
        sidecar = Path(f"{source}.sha256")
        expected = sidecar.read_text().split()[0] if sidecar.exists() else None
    sink.flush()
    actual = digest.hexdigest()
    if expected is None:
        raise ChecksumMismatch(f"{where} has no recorded SHA-256; refusing to trust it")
    if actual != expected:
        raise ChecksumMismatch(f"{where}: SHA-256 {actual} differs from recorded {expected}")
    return StoredObject(key=key, location=where, size=size, sha256=actual)


def get_file(store: ArchiveStore, key: str, dest: Path) -> StoredObject:
    """Download `key` into the file `dest`, verified as `get_stream` does."""
    with dest.open("wb") as sink:
        return get_stream(store, key, sink)


def _head_hint(status: object) -> str:
    """What a 403 to a HEAD usually means: S3 answers 403, not 404, for a missing object when
    the credentials may not list the bucket."""
    if status != 403:
        return ""
    return (
        " (S3 answers 403 for a missing object when the credentials lack s3:ListBucket on the "
        "bucket: grant s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the "
        "archive's prefix)"
    )


def object_exists(store: ArchiveStore, key: str) -> bool:
    """Whether `key` exists (S3 HEAD, or the file); storage errors other than 404 propagate."""
    if isinstance(store, S3Bucket):
        return _s3_head(store, key) is not None
    return (_folder_path(store, key)).exists()


def _s3_head(store: S3Bucket, key: str) -> dict[str, str] | None:
    """S3 HEAD of `key`: its user metadata, or None when there is no such object (404); any other
    error is a ConnectionFailed naming the object (and the permission a 403 may mean)."""
    s3_key = _s3_key(store, key)
    try:
        head = store.credentials.get_s3_client().head_object(Bucket=store.bucket_name, Key=s3_key)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            return None
        raise ConnectionFailed(
            f"S3 HEAD of s3://{store.bucket_name}/{s3_key} failed: {exc}{_head_hint(status)}"
        ) from exc
    except BotoCoreError as exc:
        raise ConnectionFailed(
            f"S3 HEAD of s3://{store.bucket_name}/{s3_key} failed: {exc}"
        ) from exc
    return dict(head.get("Metadata", {}))


def delete_object(store: ArchiveStore, key: str) -> None:
    """Delete `key` (and, in a folder, its `.sha256`); a missing object is no error."""
    if isinstance(store, S3Bucket):
        s3_key = _s3_key(store, key)
        try:
            store.credentials.get_s3_client().delete_object(Bucket=store.bucket_name, Key=s3_key)
        except (ClientError, BotoCoreError) as exc:
            raise ConnectionFailed(
                f"S3 delete of s3://{store.bucket_name}/{s3_key} failed: {exc}"
            ) from exc
        return
    path = _folder_path(store, key)
    path.unlink(missing_ok=True)
    Path(f"{path}.sha256").unlink(missing_ok=True)


PROBE_PREFIX = "perfops-probe"
PROBE_BODY = b"perfops archive probe\n"
PROBE_TIMEOUT_S = 5
"""The probe's connect and read timeouts: a 22-byte object answers in milliseconds, and an
endpoint that accepts and never answers must not hold a rotation for the block's own read
timeout (60 s, sized for large archives) on every attempt. The block's retries of transient
errors (5xx, throttling, timeouts) stay as they are."""


def _probing(store: ArchiveStore) -> ArchiveStore:
    """`store` with the probe's timeouts on its S3 client (a folder as it is)."""
    if not isinstance(store, S3Bucket):
        return store
    params = store.credentials.aws_client_parameters
    config = {
        **(params.config or {}),
        "connect_timeout": PROBE_TIMEOUT_S,
        "read_timeout": PROBE_TIMEOUT_S,
    }
    credentials = store.credentials.model_copy(
        update={"aws_client_parameters": params.model_copy(update={"config": config})}
    )
    return store.model_copy(update={"credentials": credentials})


@task(name="probe_archive", cache_policy=NO_CACHE)
def probe_archive(store: ArchiveStore) -> str:
    """Prove the store usable before anything depends on it: write a small object (its SHA-256
    checked), read it back and verify it, then delete it. Each probe has a key of its own
    (`perfops-probe/<random>.txt`), so concurrent runs never read each other's. Returns what was
    done, for people; raises `ConnectionFailed` or `ChecksumMismatch` naming the step that
    failed. Each attempt waits at most PROBE_TIMEOUT_S (the block's retries stay)."""
    store = _probing(store)
    key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}.txt"
    put_object.fn(store, key, PROBE_BODY)
    try:
        data = get_object.fn(store, key)
    finally:
        delete_object(store, key)
        if isinstance(store, LocalFileSystem):
            with suppress(OSError):  # the folder the probe made, when nothing else is in it
                _folder_path(store, PROBE_PREFIX).rmdir()
    return f"wrote, read back and deleted a {len(data)}-byte probe"


def list_keys(store: ArchiveStore, prefix: str) -> list[str]:
    """Every object under the folder `prefix`, as keys relative to it, sorted (a folder store's
    `.sha256` sidecars are part of their object, not objects)."""
    if isinstance(store, S3Bucket):
        base = _s3_key(store, prefix).rstrip("/") + "/"
        keys: list[str] = []
        try:
            pages = (
                store.credentials.get_s3_client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=store.bucket_name, Prefix=base)
            )
            for page in pages:
                keys += [o["Key"].removeprefix(base) for o in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise ConnectionFailed(
                f"S3 listing of s3://{store.bucket_name}/{base} failed: {exc}"
            ) from exc
        return sorted(keys)
    root = _folder_path(store, prefix)
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix != ".sha256"
    )


def recorded_sha256(store: ArchiveStore, key: str) -> str | None:
    """The SHA-256 recorded when `key` was written (S3 metadata, or the folder's `.sha256`),
    without reading the object; None when the object or its checksum is missing."""
    if isinstance(store, S3Bucket):
        metadata = _s3_head(store, key)
        return None if metadata is None else metadata.get("sha256")
    path = _folder_path(store, key)
    sidecar = Path(f"{path}.sha256")
    if not path.exists() or not sidecar.exists():
        return None
    return sidecar.read_text().split()[0]


class ArchiveInconsistent(PerfopsError):
    """A week's archived report is not what its manifest says."""


def read_report_manifest(store: ArchiveStore, prefix: str) -> ReportManifest:
    """The manifest of the report archived under `prefix` (its own SHA-256 verified)."""
    key = f"{prefix}/{MANIFEST}"
    data = get_object.fn(store, key)
    try:
        return ReportManifest.model_validate_json(data)
    except ValueError as exc:
        raise ArchiveInconsistent(
            f"{object_location(store, key)} is not a report manifest: {exc}"
        ) from None


@task(name="find_archived_report", cache_policy=NO_CACHE)
def find_archived_report(store: ArchiveStore, prefix: str) -> ArchivedReport | None:
    """The report already archived under `prefix`, if any (decisions.report_archive): its
    manifest and the files that no longer match it; an archive from before manifests when
    only its `index.html` is there; None when neither is (nothing, or files of a run that
    stopped before its page)."""
    link = object_link(store, f"{prefix}/index.html")
    if object_exists(store, f"{prefix}/{MANIFEST}"):
        try:
            manifest = read_report_manifest(store, prefix)
        except (ChecksumMismatch, ArchiveInconsistent) as exc:
            return ArchivedReport(link=link, differing=[f"{MANIFEST} ({one_line(exc)})"])
        differing = [
            name
            for name, entry in manifest.files.items()
            if recorded_sha256(store, f"{prefix}/{name}") != entry.sha256
        ]
        return ArchivedReport(link=link, manifest=manifest, differing=differing)
    if object_exists(store, f"{prefix}/index.html"):
        return ArchivedReport(link=link)
    return None


@task(name="archive_weekly_report", cache_policy=NO_CACHE)
def archive_report(
    store: ArchiveStore, prefix: str, files: dict[str, bytes], week: str, generated_at: datetime
) -> tuple[list[StoredObject], ReportManifest]:
    """Write every file of the report under `prefix` (each with its SHA-256), then its manifest
    (`manifest.json`, decisions.report_archive): the page after the files it points at, the
    manifest last, so a manifest is only there once the whole report is."""
    index = {k: v for k, v in files.items() if k != "index.html"}
    stored = [put_object.fn(store, f"{prefix}/{key}", data) for key, data in index.items()]
    stored.append(put_object.fn(store, f"{prefix}/index.html", files["index.html"]))
    manifest = build_manifest(
        week,
        generated_at,
        [(s.key.removeprefix(f"{prefix}/"), s.size, s.sha256) for s in stored],
    )
    put_object.fn(store, f"{prefix}/{MANIFEST}", manifest.model_dump_json(indent=2).encode())
    return stored, manifest


@task(name="remove_replaced_report_files", cache_policy=NO_CACHE)
def remove_stale_files(store: ArchiveStore, prefix: str, manifest: ReportManifest) -> list[str]:
    """After a replacement: delete the files under `prefix` that the new `manifest` does not
    list (the earlier report's, e.g. its `data/fleet.csv`). Verified before: the manifest read
    back from the archive is the one just written, so nothing is deleted unless the new report
    is complete. Verified after: the folder then holds exactly the manifest's files. Idempotent:
    a rerun finds nothing left to delete. Returns the keys deleted (relative to `prefix`)."""
    where = object_location(store, f"{prefix}/{MANIFEST}")
    if read_report_manifest(store, prefix) != manifest:
        raise ArchiveInconsistent(
            f"{where} is not the manifest just written (another run replaced it meanwhile?): "
            "nothing deleted"
        )
    stale = stale_files(list_keys(store, prefix), manifest)
    for name in stale:
        delete_object(store, f"{prefix}/{name}")
    listed = list_keys(store, prefix)
    left, missing = stale_files(listed, manifest), sorted(set(manifest.files) - set(listed))
    if left or missing:
        raise ArchiveInconsistent(
            f"{object_location(store, prefix)} does not match {where} after the replacement: "
            + "; ".join(
                filter(
                    None,
                    [
                        f"still there: {', '.join(left)}" if left else "",
                        f"missing: {', '.join(missing)}" if missing else "",
                    ],
                )
            )
        )
    if isinstance(store, LocalFileSystem):  # folders the deleted files leave empty
        root = _folder_path(store, prefix)
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            with suppress(OSError):
                folder.rmdir()
    return stale


@task(name="write_report_folder", cache_policy=NO_CACHE)
def write_folder(folder: Path, files: dict[str, bytes]) -> str:
    """A browsable copy: FOLDER/index.html with charts/ and data/ beside it."""
    for key, data in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(folder / "index.html")
