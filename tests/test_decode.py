"""The one decode path: ingest, labelling and ``recommend --audio`` turn every track into
tokens or an error row naming it, by one policy, whatever goes wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from genreflow import decode
from genreflow.errors import AudioError
from genreflow.formats.dataset import tokens_numpy
from genreflow.ingest import ingest_shard
from genreflow.label import decode_for_label
from genreflow.tokens import TokenSpec
from tests.audio_fixtures import write_tone

SPEC = TokenSpec(clip_s=2.0, n_tokens=2, token_s=1.0, n_mels=32)


@pytest.fixture
def batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    """Four tracks: two good tones, a missing file, and one whose decoder hits a bug
    (a RuntimeError no decoder is meant to raise)."""
    good = [write_tone(tmp_path / f"g{i}.wav", 330.0 + 110 * i, duration_s=2.0) for i in range(2)]
    buggy = write_tone(tmp_path / "bug.wav", 220.0, duration_s=2.0)
    load = decode.load_clip

    def load_clip(uri: str, **kwargs: Any) -> Any:
        if uri.endswith("bug.wav"):
            raise RuntimeError("a decoder bug")
        return load(uri, **kwargs)

    monkeypatch.setattr(decode, "load_clip", load_clip)
    return pd.DataFrame(
        {
            "track_id": ["a", "missing", "bug", "b"],
            "uri": [str(good[0]), str(tmp_path / "nope.wav"), str(buggy), str(good[1])],
            "genre": ["rock", "jazz", None, "pop"],
            "split": ["train", "test", "test", None],
            "lyrics": ["la la", None, None, None],
            "artist_id": ["1", "2", "3", "4"],
            "valence": [0.1, 0.5, float("nan"), 0.9],
        }
    )


def test_every_track_ends_as_tokens_or_an_error_row_naming_it(batch: pd.DataFrame) -> None:
    decoded = decode.decode_tokens(batch["track_id"].tolist(), batch["uri"].tolist(), SPEC)
    assert decoded.index == [0, 3]
    assert decoded.tokens.shape == (2, *SPEC.token_shape) and decoded.tokens.dtype == np.float16
    np.testing.assert_array_equal(
        decoded.tokens[1], decode.tokenize_track(batch["uri"][3], SPEC)[0]
    )
    assert decoded.failed == {1: "missing", 2: "internal"}
    assert [(e["track_id"], e["kind"]) for e in decoded.errors] == [
        ("missing", "missing"),
        ("bug", "internal"),
    ]
    assert "RuntimeError: a decoder bug" in decoded.errors[1]["error"]
    assert len(decoded.seconds) == 4


def test_ingest_and_labelling_apply_the_same_policy(batch: pd.DataFrame, tmp_path: Path) -> None:
    summary = ingest_shard(
        batch, out=str(tmp_path / "ds"), spec=SPEC.to_dict(), vocabulary=["jazz", "pop", "rock"],
        min_duration_s=0.0, allow_silent=False,
    )  # fmt: skip
    assert summary["status"].tolist() == ["ok", "error", "error", "ok"]
    assert summary["kind"].tolist() == ["", "missing", "internal", ""]
    shard = pq.read_table(next((tmp_path / "ds" / "shards").glob("*.parquet")))
    assert shard["track_id"].to_pylist() == ["a", "b"]
    assert shard["genre_idx"].to_pylist() == [2, 1]

    rows = decode_for_label(
        batch, spec=SPEC.to_dict(), errors_dir=str(tmp_path / "errors"), attempt="a1",
        min_duration_s=0.0, allow_silent=False,
    )  # fmt: skip
    assert rows["track_id"].tolist() == ["a", "b"]
    assert rows["lyrics"].tolist() == ["la la", None] and rows["split"].tolist() == ["train", None]
    np.testing.assert_array_equal(rows["tokens"], tokens_numpy(shard["tokens"]))
    errors = pq.read_table(next((tmp_path / "errors").glob("*.parquet"))).to_pylist()
    ingest_errors = pq.read_table(next((tmp_path / "ds" / "errors").glob("*.parquet"))).to_pylist()
    assert errors == ingest_errors  # the same error rows, word for word


def test_one_file_fails_with_the_message_its_error_row_carries(batch: pd.DataFrame) -> None:
    with pytest.raises(AudioError, match="a decoder bug") as caught:
        decode.decode_one(batch["uri"][2], SPEC)
    assert caught.value.kind == "internal"
    tokens, duration = decode.decode_one(batch["uri"][0], SPEC)
    assert tokens.shape == SPEC.token_shape and duration == pytest.approx(2.0, abs=0.05)
