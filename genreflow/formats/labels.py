"""The labels folder: what ``genreflow label`` writes and the index, the report and
``recommend`` read.

``<out>/run-<UTC time>-<id>/`` is one partition per label run: ``labels-NNNNN.parquet``
files of :data:`LABELS_SCHEMA` rows (each written whole, ``rows_per_file`` rows at
most), ``errors/`` (error rows of tracks that could not be labelled), :data:`STARTED_FILE`
(the model version and input, written as the run starts) and, written last,
:data:`RUN_FILE`: the run record that marks the partition complete. A partition without
it is an interrupted run's, which readers skip; the next run with the same model and
input continues it (its label files are kept), any other run removes it.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from genreflow import storage
from genreflow.errors import GenreflowError

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
    """Partitions of ``out`` that finished (hold a run record), oldest first."""
    return [p for p in partitions(out) if storage.exists(storage.join(p, RUN_FILE))]


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
    parts = complete_partitions(labels)
    if not parts:
        raise GenreflowError(f"no finished label runs in {labels!r}: run `genreflow label` first")
    records = [storage.read_json(storage.join(p, RUN_FILE)) for p in parts]
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
