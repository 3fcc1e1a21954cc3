"""Mood and lyrics through every stage: catalog -> ingest -> train -> label.

Two generated catalogs make each signal decisive on its own:
- mood: genre is the timbre (pure sine or buzzy harmonics), mood is the pitch (low and
  slow = sad valence, high = happy valence), and a quarter of the tracks have no valence;
- lyrics: both genres sound alike (the same random tones) and only the lyrics' words
  tell them apart; a sixth of the tracks have no lyrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from genreflow import checkpoint as ckpt
from genreflow.config import load_config
from genreflow.formats.labels import read_labels
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.models.lyrics import LyricsVocab
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.pipelines.train import run_train
from genreflow.train import TrainConfig
from tests.audio_fixtures import write_audio
from tests.pipelines.conftest import SMALL_SPEC

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

SR = 22050
SPLITS = ["catalog_options.split_fractions=[0.5, 0.25, 0.25]"]


def voice(freq_hz: float, *, buzzy: bool, seed: int, duration_s: float = 8.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * SR)) / SR
    wave = np.sin(2 * np.pi * freq_hz * t)
    if buzzy:  # odd harmonics: a square-ish timbre
        wave += sum(np.sin(2 * np.pi * k * freq_hz * t) / k for k in (3, 5, 7, 9))
    wave *= 0.3 * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t))
    return (wave + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)[:, None]


def catalog(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def ingest(manifest: Path, out: Path) -> Path:
    run_ingest(
        load_config(
            IngestConfig, overrides=SMALL_SPEC + SPLITS, catalog=str(manifest), out=str(out)
        )
    )
    return out


def train(data: Path, out: Path, model: str, epochs: int = 12) -> dict[str, Any]:
    result = run_train(
        load_config(
            TrainConfig,
            overrides=[f"epochs={epochs}", "batch_size=8", "lr=0.003", "lyrics_min_count=1"],
            data=str(data),
            out=str(out),
            model=model,
        )
    )
    return result.metrics


def held_out_labels(checkpoint: str, data: Path, out: Path) -> pd.DataFrame:
    """Labels of the val and test tracks (never trained on) by the label job."""
    run_label(load_config(LabelConfig, checkpoint=checkpoint, input=str(data), out=str(out)))
    labels = read_labels(str(out))
    splits = pq.read_table(data / "shards", columns=["track_id", "split", "valence"]).to_pandas()
    merged = labels.merge(splits, on="track_id", suffixes=("", "_of_shards"))
    assert (merged["split"] == merged["split_of_shards"]).all()  # labels carry the split
    return merged[merged["split"] != "train"]


@pytest.fixture(scope="module")
def mood_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mood")
    rows = []
    for i in range(48):
        buzzy, happy = i % 2 == 1, (i // 2) % 2 == 1
        freq = (700 + 20 * (i % 7)) if happy else (110 + 5 * (i % 7))
        path = write_audio(root / "audio" / f"m{i}.wav", voice(freq, buzzy=buzzy, seed=i), SR)
        valence = (0.85 if happy else 0.1) if i % 4 != 3 else None  # a quarter: unknown
        rows.append(
            {
                "track_id": f"m{i:02d}",
                "uri": str(path),
                "genre": "buzz" if buzzy else "pure",
                "artist_id": f"a{i}",
                "valence": valence,
            }
        )
    return ingest(catalog(root, rows), root / "dataset")


def test_the_multitask_model_learns_mood_and_labels_carry_it(
    mood_data: Path, tmp_path: Path
) -> None:
    metrics = train(mood_data, tmp_path / "run", "multitask_attention_cnn")
    assert "mood" in metrics["test"]
    labels = held_out_labels(metrics["best_checkpoint"], mood_data, tmp_path / "labels")
    known = labels[labels["valence"].notna()]
    truth = np.where(known["valence"] < 0.3, "sad", "happy")
    mood_accuracy = float((known["mood"].to_numpy() == truth).mean())
    # chance is 1/3 (three classes); the pitch makes mood audible
    assert mood_accuracy >= 0.8, mood_accuracy
    for probs in labels["mood_probs"]:
        assert {p["mood"] for p in probs} == {"sad", "neutral", "happy"}
        assert sum(p["prob"] for p in probs) == pytest.approx(1.0, abs=1e-4)
    # tracks without valence are labelled with a mood too
    assert labels.loc[labels["valence"].isna(), "mood"].notna().all()


LYRICS = {
    "sunny": ["sun shines bright over summer fields", "golden light and warm beaches"],
    "stormy": ["storm clouds roll over dark hills", "cold rain and thunder at night"],
}
FILLER = "we walk along the road and sing"


@pytest.fixture(scope="module")
def lyrics_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lyrics")
    rows = []
    rng = np.random.default_rng(3)
    for i in range(48):
        genre = "sunny" if i % 2 else "stormy"
        freq = float(rng.uniform(250, 600))  # the same sound for both genres
        path = write_audio(root / "audio" / f"l{i}.wav", voice(freq, buzzy=i % 3 == 0, seed=i), SR)
        words = LYRICS[genre][i % 2]
        lyrics = None if i % 6 == 5 else f"{FILLER}\n{words}\n{FILLER}"
        rows.append(
            {
                "track_id": f"l{i:02d}",
                "uri": str(path),
                "genre": genre,
                "artist_id": f"a{i}",
                "lyrics": lyrics,
            }
        )
    return catalog(root, rows)


def test_the_multimodal_model_beats_its_audio_branch_when_lyrics_carry_the_genre(
    lyrics_catalog: Path, tmp_path: Path
) -> None:
    with_lyrics = ingest(lyrics_catalog, tmp_path / "with")
    rows = pd.read_csv(lyrics_catalog).drop(columns=["lyrics"])
    no_lyrics_catalog = catalog(tmp_path, rows.to_dict("records"))
    audio_only = ingest(no_lyrics_catalog, tmp_path / "without")
    both = train(with_lyrics, tmp_path / "run-with", "multimodal_han")
    audio = train(audio_only, tmp_path / "run-without", "multimodal_han")
    # the run's vocabulary (a Ray pass over the shards) is the in-memory rule's
    shards = pq.read_table(with_lyrics / "shards", columns=["split", "lyrics"]).to_pandas()
    expected = LyricsVocab.build(shards.loc[shards["split"] == "train", "lyrics"], min_count=1)
    assert ckpt.load(both["best_checkpoint"])["lyrics_vocab"] == list(expected.words)

    def accuracy(metrics: dict[str, Any], data: Path) -> float:
        """Accuracy over the validation and test tracks (never trained on)."""
        n_val = json.loads((data / "_dataset.json").read_text())["counts"]["by_split"]["val"]
        val, test = metrics["best_val"]["val_accuracy"], metrics["test"]
        return float((val * n_val + test["accuracy"] * test["count"]) / (n_val + test["count"]))

    acc_both, acc_audio = accuracy(both, with_lyrics), accuracy(audio, audio_only)
    # the lyrics decide: near-perfect with them, near chance (1/2) from sound alone
    assert acc_both >= 0.85, (acc_both, acc_audio)
    assert acc_both >= acc_audio + 0.2, (acc_both, acc_audio)

    # tracks without lyrics (a sixth of the catalog) still get labels, from raw audio too
    raw = run_label(
        load_config(
            LabelConfig,
            checkpoint=both["best_checkpoint"],
            input=str(lyrics_catalog),
            out=str(tmp_path / "raw"),
        )
    )
    assert raw.labelled == 48 and raw.errors == 0
    labels = read_labels(str(tmp_path / "raw")).set_index("track_id")
    without = [f"l{i:02d}" for i in range(48) if i % 6 == 5]
    assert labels.loc[without, "genre"].isin(["sunny", "stormy"]).all()
