"""FMA as users download it, end to end: ingest of fma_large keeps every track (FMA's
faults as error rows naming their causes), multi-label training of every model over the
genre hierarchy, hierarchy-consistent labels; the single-label path on the same data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from genreflow.config import load_config
from genreflow.formats.labels import read_labels
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.models import MODELS
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.pipelines.train import run_train
from genreflow.train import TrainConfig
from tests.fma_fixture import FAULTS, FmaFixture, write_fma

pytestmark = pytest.mark.slow

FMA_SPEC = ["spec.sample_rate=16000", "spec.clip_s=3", "spec.n_tokens=3", "spec.token_s=1"]
FMA_SPEC += ["spec.n_mels=48"]
QUICK = ["batch_size=8", "lr=0.003", "deterministic=true"]


@pytest.fixture(scope="module")
def fma(tmp_path_factory: pytest.TempPathFactory) -> FmaFixture:
    return write_fma(tmp_path_factory.mktemp("fma"), n_tracks=120)


@pytest.fixture(scope="module")
def fma_dataset(fma: FmaFixture, ray_session: None) -> Path:
    out = fma.root / "dataset"
    overrides = [f"catalog={fma.root}", f"out={out}", "fma_subset=large", *FMA_SPEC]
    run_ingest(load_config(IngestConfig, overrides=overrides))
    return out


def _errors(dataset: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((dataset / "errors").glob("*.parquet"))])


def test_fma_large_ingest_keeps_every_track(fma: FmaFixture, fma_dataset: Path) -> None:
    manifest = json.loads((fma_dataset / "_dataset.json").read_text())
    shards = pd.concat(pd.read_parquet(f) for f in (fma_dataset / "shards").glob("*.parquet"))
    errors = _errors(fma_dataset)
    rows = shards[shards["split"] != "duplicate"]
    assert len(rows) + len(errors) == len(fma.subsets["large"])
    assert set(rows["track_id"]) | set(errors["track_id"]) == {str(t) for t in fma.subsets["large"]}
    no_top = fma.tracks.loc[fma.tracks["genre_top"].isna(), "track_id"].astype(str)
    assert set(no_top) - set(errors["track_id"]) <= set(rows["track_id"])  # rows, not dropped
    counts = manifest["counts"]["by_target"]
    assert counts["multi_only"] > 0 and counts["none"] > 0
    assert sum(counts.values()) == manifest["counts"]["rows"]
    tags, parents = manifest["labels"]["tags"], manifest["labels"]["tag_parents"]
    assert len(tags) == 28 and parents["Death-Metal"] == "Metal" and parents["Rock"] is None
    for idx in rows["tag_idx"].dropna():  # closed: every genre's parent is there too
        titles = {tags[i] for i in idx}
        assert all(parents[t] is None or parents[t] in titles for t in titles)


@pytest.mark.parametrize(
    ("fault", "kind", "cause"),
    [
        ("no_audio", "no_audio", "ID3 tag and no audio"),
        ("cut_past_end", "too_short", "catalog says the track lasts 300 s"),
        ("undecodable", "undecodable", "hold no MP3 frame"),
        ("duplicate", "duplicate_audio", "the same audio as track"),
    ],
)
def test_fmas_faults_end_as_rows_naming_their_cause(
    fma_dataset: Path, fault: str, kind: str, cause: str
) -> None:
    errors = _errors(fma_dataset).set_index("track_id")
    for tid in FAULTS[fault]:
        row = errors.loc[str(tid)]
        assert row["kind"] == kind and cause in row["error"], row["error"]


def test_a_bogus_bit_rate_is_an_ordinary_row(fma_dataset: Path) -> None:
    shards = pd.concat(pd.read_parquet(f) for f in (fma_dataset / "shards").glob("*.parquet"))
    assert str(FAULTS["bogus_bit_rate"][0]) in set(shards["track_id"])


def _train(dataset: Path, out: Path, *extra: str) -> dict[str, Any]:
    run_train(load_config(TrainConfig, overrides=[*QUICK, *extra], data=str(dataset), out=str(out)))
    return dict(json.loads((out / "metrics.json").read_text()))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_multi_label(model: str, fma_dataset: Path, tmp_path: Path) -> None:
    metrics = _train(fma_dataset, tmp_path / "run", f"model={model}", "task=multi", "epochs=5")
    tags = metrics["test"]["tags"]
    for key in ("macro_roc_auc", "micro_roc_auc", "macro_pr_auc", "micro_pr_auc", "macro_f1"):
        assert math.isfinite(tags[key]), key
    assert set(tags["by_level"]) == {"1", "2", "3"}
    assert tags["macro_roc_auc"] > 0.6  # every genre's tone is in its tracks: learnable
    assert "accuracy" not in metrics["test"]  # no single-label head to score


@pytest.fixture(scope="module")
def multi_run(fma_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multi") / "run"
    _train(fma_dataset, out, "model=signature_attention", "task=multi", "epochs=8")
    return out


def test_learnable_tags_score_well_above_chance(multi_run: Path) -> None:
    tags = json.loads((multi_run / "metrics.json").read_text())["test"]["tags"]
    assert tags["macro_roc_auc"] > 0.8 and tags["macro_pr_auc"] > 0.5


def test_labels_carry_thresholded_genres_without_orphans(
    multi_run: Path, fma_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "labels"
    run_label(
        load_config(LabelConfig, checkpoint=str(multi_run), input=str(fma_dataset), out=str(out))
    )
    labels = read_labels(str(out))
    manifest = json.loads((fma_dataset / "_dataset.json").read_text())
    parents = manifest["labels"]["tag_parents"]
    metrics = json.loads((multi_run / "metrics.json").read_text())
    state_thresholds = dict(
        zip(metrics["labels"]["tags"], metrics["best_val"] and _thresholds(metrics), strict=True)
    )
    assert labels["genre_tags"].map(len).sum() > 0
    for tags in labels["genre_tags"]:
        names = {t["genre"] for t in tags}
        for t in tags:
            assert parents[t["genre"]] is None or parents[t["genre"]] in names
            assert t["score"] >= state_thresholds[t["genre"]] - 1e-6
    assert labels["true_genres"].notna().sum() > 0.8 * len(labels)
    assert set(labels["genre"]) <= set(manifest["labels"]["tags"])  # top-k over the tags


def _thresholds(metrics: dict[str, Any]) -> list[float]:
    from genreflow import checkpoint

    return checkpoint.load_model(metrics["best_checkpoint"]).tag_thresholds


def test_both_heads_train_at_once(fma_dataset: Path, tmp_path: Path) -> None:
    metrics = _train(fma_dataset, tmp_path / "run", "model=baseline_cnn", "task=both", "epochs=2")
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0  # the single-label head
    assert math.isfinite(metrics["test"]["tags"]["macro_roc_auc"])  # and the multi-label one


def test_single_label_training_skips_tracks_without_genre_top(
    fma_dataset: Path, tmp_path: Path
) -> None:
    metrics = _train(fma_dataset, tmp_path / "run", "model=baseline_cnn", "epochs=1")
    manifest = json.loads((fma_dataset / "_dataset.json").read_text())
    with_top = sum(
        n for g, n in manifest["counts"]["by_split_genre"]["test"].items() if g != "none"
    )
    assert metrics["test"]["count"] == with_top  # scored on the tracks that have a genre
