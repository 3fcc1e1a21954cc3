"""Paths that may be local or ``s3://bucket/prefix``, and atomic writes on both.

Local writes go to a temporary name beside the target and are moved into place with
``os.replace``; S3 puts are atomic per object, so a reader sees an old or a new object,
never half of one. S3 credentials come only from the environment or the instance role
(pyarrow's default AWS chain); ``AWS_ENDPOINT_URL`` points at S3-compatible stores.
"""

from __future__ import annotations

import functools
import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from genreflow.errors import StorageError
from genreflow.paths import local_path


def is_remote(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return len(scheme) > 1 and scheme != "file"


S3_ATTEMPTS_ENV = "GENREFLOW_S3_ATTEMPTS"
S3_ATTEMPTS = 8  # per request: the AWS SDK's standard retries, exponential backoff with jitter
S3_CONNECT_TIMEOUT_S = 10.0


def _s3_attempts() -> int:
    raw = os.environ.get(S3_ATTEMPTS_ENV, "")
    try:
        return max(1, int(raw)) if raw else S3_ATTEMPTS
    except ValueError:
        raise StorageError(f"{S3_ATTEMPTS_ENV}={raw!r} is not a whole number") from None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None, attempts: int) -> pafs.S3FileSystem:
    """An S3 filesystem whose every request is retried ``attempts`` times with backoff (a
    node's endpoint blinking during a nightly job), and that fails after that: a write
    that never completes leaves no object, so nothing half-written is ever published."""
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path within it for a local path or URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket; expected s3://bucket/prefix")
        fs = _s3_filesystem(
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            _s3_attempts(),
        )
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    if is_remote(uri):
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"no filesystem for {uri!r}: {exc}") from exc
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def _hint(exc: OSError) -> str:
    """What to check for an object-store error (never the credentials themselves)."""
    text = str(exc)
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "403")):
        return (
            " (access denied: check the credentials in the environment or the instance "
            "role, and their permissions on this bucket)"
        )
    if any(s in text for s in ("NETWORK_CONNECTION", "Couldn't connect", "Connection refused")):
        return (
            f" (the storage endpoint did not answer after {_s3_attempts()} attempts with "
            f"backoff; check it and AWS_ENDPOINT_URL, or raise {S3_ATTEMPTS_ENV})"
        )
    return ""


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise StorageError(f"cannot reach {uri!r}: {exc}{_hint(exc)}") from exc


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise StorageError(f"cannot create {uri!r}: {exc}{_hint(exc)}") from exc


def list_files(uri: str, *, suffix: str = "") -> list[str]:
    """Files directly inside folder ``uri`` whose name ends with ``suffix``, sorted.

    Names starting with ``.`` or ``_`` (temporary and bookkeeping files) are skipped.
    A missing folder lists as empty.
    """
    return [found for found, _ in file_sizes(uri, suffix=suffix)]


def file_sizes(uri: str, *, suffix: str = "") -> list[tuple[str, int]]:
    """``(uri, bytes)`` of the files :func:`list_files` lists, from the same listing."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {uri!r}: {exc}") from exc
    found = sorted(
        (info.base_name, int(info.size or 0))
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(suffix)
        and not info.base_name.startswith((".", "_"))
    )
    return [(join(uri, name), size) for name, size in found]


def with_sizes(uris: list[str]) -> list[tuple[str, int]]:
    """``(uri, bytes)`` of each file named (one lookup per file)."""
    sized = []
    for uri in uris:
        fs, path = resolve(uri)
        try:
            info = fs.get_file_info(path)
        except OSError as exc:
            raise StorageError(f"cannot look up {uri!r}: {exc}{_hint(exc)}") from exc
        if info.type != pafs.FileType.File:
            raise StorageError(f"{uri!r} is not a file")
        sized.append((uri, int(info.size or 0)))
    return sized


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except FileNotFoundError as exc:
        raise StorageError(f"{uri!r} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {uri!r}: {exc}{_hint(exc)}") from exc


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so a reader sees the old object or the whole new one."""
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(
                os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
            )
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {uri!r}: {exc}{_hint(exc)}") from exc


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"{uri!r} is not valid JSON: {exc}") from exc


def write_json_atomic(uri: str, data: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_parquet_atomic(table: pa.Table, uri: str) -> None:
    """Write ``table`` as one Parquet file, atomically (see :func:`write_bytes_atomic`).

    zstd throughout; dictionary encoding only for columns that are not floating point.
    Float tokens have too many distinct values for a dictionary: with one, a shard of
    log-mel tokens is 35 % larger and reads 3x slower (bench/RESULTS.md).
    """
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary_columns(table.schema))
    write_bytes_atomic(uri, sink.getvalue())


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: every one without floating-point values."""
    return [f.name for f in schema if not _is_floating(f.type)]


def _is_floating(kind: pa.DataType) -> bool:
    if isinstance(kind, pa.BaseExtensionType):
        return _is_floating(kind.storage_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _is_floating(kind.value_type)
    return bool(pa.types.is_floating(kind))


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file (or the named columns of it) as a table.

    Read through the Arrow filesystem, never from Python bytes: a table parsed from a
    Python buffer leaves Arrow's I/O threads holding it, and when one of them lets go
    during interpreter shutdown it needs the GIL and aborts the process ("terminate
    called without an active exception", seen in ``genreflow recommend``).
    """
    fs, path = resolve(uri)
    try:
        return pq.read_table(path, columns=columns, filesystem=fs)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri!r} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot read Parquet {uri!r}: {exc}{_hint(exc)}") from exc


def read_row_group(uri: str, group: int) -> pa.Table:
    """Row group ``group`` of the Parquet file ``uri``: its footer and that group only."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(group)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri!r} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot read Parquet {uri!r}: {exc}{_hint(exc)}") from exc


def read_parquet_columns(uris: list[str], columns: list[str]) -> Iterator[pa.Table]:
    """Stream the named columns of Parquet files, one file at a time."""
    for uri in uris:
        yield read_parquet(uri, columns)


def delete_tree(uri: str) -> None:
    """Delete folder ``uri`` and everything in it (nothing if it is not there)."""
    fs, path = resolve(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot delete {uri!r}: {exc}") from exc


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot delete {uri!r}: {exc}") from exc
