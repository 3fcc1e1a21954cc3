"""The labels folder: what ``genreflow label`` writes and the index, the report and
``recommend`` read.

``<out>/run-<UTC time>-<id>/`` is one partition per label run:
``labels-<attempt>-<digest>.parquet`` files of :data:`LABELS_SCHEMA` rows (each written
whole by a write task beside the model actors, about ``rows_per_file`` rows, named by the
run attempt that wrote them and a digest of their track ids), ``errors/`` (error rows of
tracks that could not be labelled: ``errors-<attempt>-<digest>.parquet`` from the decode
tasks, ``catalog-*.parquet`` for the catalog rows refused before decoding),
:data:`STARTED_FILE` (the model version and input, written as the run starts) and,
written last, :data:`RUN_FILE`: the run record that marks the partition complete. A
partition without it is an interrupted run's, which readers skip; the next run with the
same model and input continues it (its label files are kept), any other run removes it.
"""

from __future__ import annotations

import hashlib
import posixpath
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from genreflow import faultpoints, storage
from genreflow.errors import GenreflowError


def label_file_name(attempt: str, track_ids: Iterable[str]) -> str:
    """A label file's name: the run attempt that wrote it and a digest of its tracks."""
    return f"labels-{attempt}-{_digest(track_ids)}.parquet"


def error_file_name(attempt: str, track_ids: Iterable[str]) -> str:
    """The name of the error rows a decode task of run ``attempt`` wrote for ``track_ids``
    (the tracks of its batch)."""
    return f"errors-{attempt}-{_digest(track_ids)}.parquet"


def written_by(uri: str, attempt: str) -> bool:
    """Whether label or error file ``uri`` was written by run ``attempt``."""
    return posixpath.basename(uri).startswith((f"labels-{attempt}-", f"errors-{attempt}-"))


def _digest(track_ids: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(sorted(track_ids)).encode()).hexdigest()[:20]


RUN_FILE = "_run.json"
STARTED_FILE = "_started.json"  # what a run labels with, written as it starts
LABEL_FILE_ROWS = 4096  # label rows per file (the default of ``rows_per_file``)

LABELS_SCHEMA_FIELDS = [
    pa.field("track_id", pa.string()),
    pa.field("genre", pa.string()),
    pa.field("genre_prob", pa.float32()),
    pa.field("genre_topk", pa.list_(pa.struct([("genre", pa.string()), ("prob", pa.float32())]))),
    pa.field("mood", pa.string()),
    pa.field("mood_probs", pa.list_(pa.struct([("mood", pa.string()), ("prob", pa.float32())]))),
    pa.field("token_weights", pa.list_(pa.float32())),
    pa.field(
        "signature_moments",
        pa.list_(
            pa.struct(
                [("start_s", pa.float32()), ("end_s", pa.float32()), ("weight", pa.float32())]
            )
        ),
    ),
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("true_genre", pa.string()),  # the catalog's genre where it has one
    # multi-label models: every genre at or above its threshold (chosen on validation)
    # whose parents are too, best first; null for a single-label model
    pa.field("genre_tags", pa.list_(pa.struct([("genre", pa.string()), ("score", pa.float32())]))),
    pa.field("true_genres", pa.list_(pa.string())),  # the catalog's genre list, where known
    pa.field("split", pa.string()),  # the track's split (train/val/test) where known
    pa.field("model_version", pa.string()),
    pa.field("labelled_at", pa.timestamp("s", tz="UTC")),
]
LABELS_SCHEMA = pa.schema(LABELS_SCHEMA_FIELDS)


def complete_partitions(out: str) -> list[str]:
    """Partitions of ``out`` that finished (hold a run record), oldest first, less those a
    finished compaction merged (their rows are in its partition; see :func:`compact`)."""
    return [p for p, _ in finished_runs(out)]


def finished_runs(out: str) -> list[tuple[str, dict[str, Any]]]:
    """Each complete partition with its run record, oldest first (see
    :func:`complete_partitions`)."""
    finished = []
    for part in partitions(out):
        record_uri = storage.join(part, RUN_FILE)
        if storage.exists(record_uri):
            finished.append((part, storage.read_json(record_uri)))
    merged = {name for _, record in finished for name in record.get("compacted_from", [])}
    return [(p, r) for p, r in finished if _name(p) not in merged]


def _name(partition: str) -> str:
    return partition.rstrip("/").rsplit("/", 1)[-1]


def drop_merged(out: str) -> None:
    """Delete finished partitions a compaction merged but could not delete (it was cut
    short after its own run record): readers skip them already."""
    finished = {_name(p): p for p in partitions(out) if storage.exists(storage.join(p, RUN_FILE))}
    kept = {_name(p) for p in complete_partitions(out)}
    for name in sorted(set(finished) - kept):
        storage.delete_tree(finished[name])


def compact(out: str, version: str, *, after: int, rows_per_file: int) -> str | None:
    """Merge the finished partitions of model ``version`` once there are more than
    ``after`` of them: every one but the largest becomes one new partition, its rows in
    files of ``rows_per_file``; returns it (None: nothing to do).

    A year of nightly incremental runs thus stays a handful of partitions and files for
    every reader instead of 365. The new partition's run record names the partitions it
    merged (``compacted_from``) and is written before they are deleted: cut short
    before it, the new partition is an interrupted run's (the next run removes it);
    after it, readers skip the merged ones (:func:`complete_partitions`) and the next
    compaction deletes them (:func:`drop_merged`). Streams one file at a time.
    """
    drop_merged(out)
    runs = [(p, r) for p, r in finished_runs(out) if r.get("model_version") == version]
    if after < 1 or len(runs) <= after:
        return None
    largest = max(runs, key=lambda run: int(run[1].get("labelled", 0)))
    sources = [run for run in runs if run is not largest]
    name = f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-compact-{uuid.uuid4().hex[:6]}"
    target = storage.join(out, name)
    labelled = _rewrite(
        [f for p, _ in sources for f in storage.list_files(p, suffix=".parquet")],
        target,
        "labels",
        rows_per_file,
    )
    errors = _rewrite(
        [
            f
            for p, _ in sources
            for f in storage.list_files(storage.join(p, "errors"), suffix=".parquet")
        ],
        storage.join(target, "errors"),
        "errors",
        rows_per_file,
    )
    newest = sources[-1][1]
    record = {
        "run": name,
        "model_version": version,
        "checkpoint": newest.get("checkpoint"),
        "input": newest.get("input"),
        "incremental": True,
        "tracks_in": sum(int(r.get("tracks_in", 0)) for _, r in sources),
        "skipped": 0,
        "labelled": labelled,
        "continued": 0,
        "errors": errors,
        "seconds": 0.0,
        "compacted_from": [_name(p) for p, _ in sources],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.makedirs(target)
    storage.write_json_atomic(storage.join(target, RUN_FILE), record)
    faultpoints.reached("labels:compacted-before-cleanup")
    drop_merged(out)
    return target


def _rewrite(files: list[str], folder: str, stem: str, rows_per_file: int) -> int:
    """The rows of ``files`` again, in files of ``rows_per_file`` rows in ``folder``
    (each written whole); returns the row count. Holds at most one file and one output
    file's rows."""
    buffered: list[pa.Table] = []
    rows = written = 0
    for uri in files:
        table = storage.read_parquet(uri)
        buffered.append(table)
        rows += table.num_rows
        while rows >= rows_per_file:
            merged = pa.concat_tables(buffered, promote_options="default")
            _write_part(merged.slice(0, rows_per_file), folder, stem, written // rows_per_file)
            written += rows_per_file
            buffered, rows = [merged.slice(rows_per_file)], rows - rows_per_file
    if rows:
        merged = pa.concat_tables(buffered, promote_options="default")
        _write_part(merged, folder, stem, written // rows_per_file)
        written += rows
    return written


def _write_part(table: pa.Table, folder: str, stem: str, index: int) -> None:
    storage.write_parquet_atomic(table, storage.join(folder, f"{stem}-{index:05d}.parquet"))


def partitions(out: str) -> list[str]:
    """Every partition folder of ``out``, finished or not, oldest first."""
    fs, path = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("run-")
    )
    return [storage.join(out, n) for n in names]


def labelled_by(finished: list[str], version: str) -> set[str]:
    """Track ids the partitions ``finished`` hold labels of model ``version`` for."""
    done: set[str] = set()
    for part in finished:
        files = storage.list_files(part, suffix=".parquet")
        for table in storage.read_parquet_columns(files, ["track_id", "model_version"]):
            frame = table.to_pandas()
            done.update(frame.loc[frame["model_version"] == version, "track_id"])
    return done


def read_labels(out: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Every finished partition's rows (small outputs and tests; stages stream instead)."""
    frames = []
    for part in complete_partitions(out):
        files = storage.list_files(part, suffix=".parquet")
        frames += (
            [t.to_pandas() for t in storage.read_parquet_columns(files, columns or [])]
            if columns
            else [pd.read_parquet(f) for f in files]
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def label_files(labels: str, version: str | None) -> tuple[list[str], str, str | None]:
    """The label Parquet files to index, the model version and its checkpoint.

    ``version`` None takes the newest finished partition's model version.

    Raises:
        GenreflowError: no finished partitions, or none of that version.
    """
    runs = finished_runs(labels)
    if not runs:
        raise GenreflowError(f"no finished label runs in {labels!r}: run `genreflow label` first")
    parts, records = [p for p, _ in runs], [r for _, r in runs]
    if version is None:
        version = str(records[-1]["model_version"])
    chosen = [p for p, r in zip(parts, records, strict=True) if r["model_version"] == version]
    if not chosen:
        known = sorted({str(r["model_version"]) for r in records})
        raise GenreflowError(
            f"no label runs of model_version {version!r} in {labels!r}; it holds {known}"
        )
    checkpoint = next(
        (str(r["checkpoint"]) for p, r in zip(parts, records, strict=True) if p in chosen[-1:]),
        None,
    )
    files = [f for p in chosen for f in storage.list_files(p, suffix=".parquet")]
    return files, version, checkpoint


def track_ids(files: list[str]) -> set[str]:
    """The track ids in label or error files."""
    ids: set[str] = set()
    for table in storage.read_parquet_columns(files, ["track_id"]):
        ids.update(str(t) for t in table.column("track_id").to_pylist())
    return ids
