"""The dataset folder: what ``genreflow ingest`` writes and training and labelling read.

``<out>/shards/part-<hash>.parquet``: token shards (:func:`shard_schema`: the track's
catalog fields, then its float16 ``tokens`` ``[n_tokens, n_mels, token_frames]``), named
by a hash of their track ids (:func:`shard_name`); ``errors/`` holds
:data:`ERRORS_SCHEMA` rows of the tracks that failed; :data:`STATE_FILE` records the
run's progress while it runs; :data:`DATASET_FILE`, written last, is the manifest
(token spec, labels, counts) that marks the dataset complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from genreflow import storage
from genreflow.errors import ConfigError
from genreflow.tokens import TokenSpec

DATASET_FORMAT = "genreflow.dataset/1"
MOOD_CLASSES = ("sad", "neutral", "happy")
STATE_FILE = "_ingest.json"
DATASET_FILE = "_dataset.json"

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string()),  # catalog | decode | dedupe
        pa.field("kind", pa.string()),  # missing | empty | undecodable | truncated | ...
        pa.field("error", pa.string()),
        pa.field("duplicate_of", pa.string()),  # duplicate_audio rows: the track it repeats
    ]
)

# Columns of a token shard besides ``tokens``, in order.
SHARD_META_FIELDS = [
    pa.field("track_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("genre", pa.string()),
    pa.field("genre_idx", pa.int32()),  # -1: no genre
    pa.field("artist_id", pa.string()),
    pa.field("valence", pa.float32()),  # NaN: unknown
    pa.field("lyrics", pa.string()),
    pa.field("uri", pa.string()),
    pa.field("duration_s", pa.float32()),  # audio present before padding
    pa.field("audio_sha256", pa.string()),  # the file's size and sampled bytes (128 bits,
    # hex; genreflow.decode.file_digest: bounded by 192 KiB whatever the file's length)
    pa.field("clip_sha256", pa.string()),  # the decoded clip, as 16-bit samples (128 bits)
    pa.field("tag_idx", pa.list_(pa.int16())),  # multi-label genres (indices into
    # labels.tags, closed under the hierarchy); null: the track has none
    pa.field("clip_start_s", pa.float32()),  # where the clip starts in the track
]

DUPLICATE_SPLIT = "duplicate"  # the split of a track whose audio another track has
DUPLICATE_KIND = "duplicate_audio"  # its error-row kind
DUPLICATES_ERRORS = "duplicates.parquet"  # errors/<this>: one row per duplicate


def tokens_type(spec: TokenSpec) -> pa.DataType:
    """Fixed-shape float16 tensor ``[n_tokens, n_mels, token_frames]``."""
    return pa.fixed_shape_tensor(pa.float16(), list(spec.token_shape))


def shard_schema(spec: TokenSpec) -> pa.Schema:
    return pa.schema([*SHARD_META_FIELDS, pa.field("tokens", tokens_type(spec))])


def tokens_array(tokens: np.ndarray, spec: TokenSpec) -> pa.Array:
    """``[rows, n_tokens, n_mels, token_frames]`` float16 -> an Arrow tensor column."""
    if tokens.shape[1:] != spec.token_shape:
        raise ValueError(f"tokens of shape {tokens.shape[1:]}, spec says {spec.token_shape}")
    return pa.FixedShapeTensorArray.from_numpy_ndarray(
        np.ascontiguousarray(tokens, dtype=np.float16)
    )


def tokens_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow tensor column -> ``[rows, ...]`` numpy array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.to_numpy_ndarray())


def multi_hot(tag_idx: Iterable[Any], n_tags: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``tag_idx`` lists (None: no multi-label target) -> ``([rows, n_tags] uint8
    multi-hot, [rows] uint8 1 where the row has a target)``."""
    rows = list(tag_idx)
    hot = np.zeros((len(rows), n_tags), dtype=np.uint8)
    known = np.zeros(len(rows), dtype=np.uint8)
    for r, idx in enumerate(rows):
        if idx is None or len(idx) == 0:
            continue
        hot[r, np.asarray(idx, dtype=np.int64)] = 1
        known[r] = 1
    return hot, known


def mood_index(valence: float) -> int:
    """Valence -> mood class (paper 001): sad < 0.3 <= neutral < 0.6 <= happy; -1 unknown."""
    if valence is None or not np.isfinite(valence):
        return -1
    return 0 if valence < 0.3 else (1 if valence < 0.6 else 2)


def shard_name(track_ids: Iterable[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(track_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def read_dataset_manifest(data: str) -> dict[str, Any]:
    """The ``_dataset.json`` of a finished ingest output.

    Raises:
        ConfigError: the folder is missing or its ingest never finished.
    """
    uri = storage.join(data, DATASET_FILE)
    if not storage.exists(uri):
        raise ConfigError(
            f"{data!r} is not a finished genreflow dataset (no {DATASET_FILE}); run "
            "`genreflow ingest` into it first, or let an interrupted ingest finish"
        )
    manifest: dict[str, Any] = storage.read_json(uri)
    return manifest


def split_shards(data: str, manifest: dict[str, Any], splits: Iterable[str]) -> list[str]:
    """The shard files holding rows of ``splits``: those the manifest's ``shard_splits``
    names for them (ingest writes each split's tracks to shards of their own), every
    shard for a dataset written before it recorded them."""
    files = storage.list_files(storage.join(data, "shards"), suffix=".parquet")
    by_shard: dict[str, list[str]] | None = manifest.get("shard_splits")
    if by_shard is None:
        return files
    wanted = set(splits)
    return [f for f in files if wanted & set(by_shard.get(f.rsplit("/", 1)[-1], wanted))]
