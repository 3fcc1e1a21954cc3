"""Parquet files as genreflow writes them: exact round trips, encodings chosen per column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genreflow import storage
from genreflow.errors import StorageError
from genreflow.formats.dataset import shard_schema, tokens_array, tokens_numpy
from genreflow.tokens import TokenSpec


def test_token_shards_round_trip_and_only_non_float_columns_use_dictionaries(
    tmp_path: Path,
) -> None:
    spec = TokenSpec(n_tokens=2, n_mels=8, token_s=0.5, clip_s=1.0)
    rows = 6
    rng = np.random.default_rng(0)
    tokens = rng.normal(-40, 20, (rows, *spec.token_shape)).astype(np.float16)
    columns = {
        "track_id": pa.array([f"t{i}" for i in range(rows)]),
        "split": pa.array(["train"] * rows),
        "genre": pa.array(["rock", "jazz"] * 3),
        "genre_idx": pa.array([0, 1] * 3, pa.int32()),
        "artist_id": pa.array(["a"] * rows),
        "valence": pa.array([0.5] * rows, pa.float32()),
        "lyrics": pa.array([None] * rows, pa.string()),
        "uri": pa.array([f"/music/{i}.mp3" for i in range(rows)]),
        "duration_s": pa.array([1.0] * rows, pa.float32()),
        "audio_sha256": pa.array([f"{i:032x}" for i in range(rows)]),
        "clip_sha256": pa.array([f"{i + 1:032x}" for i in range(rows)]),
        "tag_idx": pa.array([[0, 3], None] * 3, pa.list_(pa.int16())),
        "clip_start_s": pa.array([0.0] * rows, pa.float32()),
        "tokens": tokens_array(tokens, spec),
    }
    table = pa.Table.from_pydict(columns, schema=shard_schema(spec))
    path = tmp_path / "shard.parquet"

    storage.write_parquet_atomic(table, str(path))

    back = pq.read_table(path)
    assert back.equals(table)
    np.testing.assert_array_equal(tokens_numpy(back.column("tokens")), tokens)
    encodings = {
        chunk.path_in_schema.split(".")[0]: chunk.encodings
        for chunk in (
            pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(table.num_columns)
        )
    }
    assert "RLE_DICTIONARY" not in encodings["tokens"]
    assert "RLE_DICTIONARY" not in encodings["valence"]
    assert "RLE_DICTIONARY" in encodings["genre"]
    assert storage.dictionary_columns(table.schema) == [
        "track_id",
        "split",
        "genre",
        "genre_idx",
        "artist_id",
        "lyrics",
        "uri",
        "audio_sha256",
        "clip_sha256",
        "tag_idx",
    ]


def test_files_are_listed_with_their_sizes(tmp_path: Path) -> None:
    (tmp_path / "b.parquet").write_bytes(b"x" * 7)
    (tmp_path / "a.parquet").write_bytes(b"")
    (tmp_path / "_done.parquet").write_bytes(b"bookkeeping")
    (tmp_path / "c.json").write_bytes(b"{}")
    listed = storage.file_sizes(str(tmp_path), suffix=".parquet")
    assert listed == [(str(tmp_path / "a.parquet"), 0), (str(tmp_path / "b.parquet"), 7)]
    assert storage.list_files(str(tmp_path), suffix=".parquet") == [u for u, _ in listed]
    assert storage.with_sizes([str(tmp_path / "b.parquet")]) == [(str(tmp_path / "b.parquet"), 7)]
    with pytest.raises(StorageError, match=r"missing\.parquet"):
        storage.with_sizes([str(tmp_path / "missing.parquet")])
