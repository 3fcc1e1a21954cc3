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
    return write_fma(tmp_path_factory.mktemp("fma"), n_tracks=90)


@pytest.fixture(scope="module")
def fma_dataset(fma: FmaFixture, ray_session: None) -> Path:
    out = fma.root / "dataset"
    overrides = [f"catalog={fma.root}", f"out={out}", "catalog_options.fma_subset=large", *FMA_SPEC]
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


@pytest.fixture(scope="module")
def multi_runs(fma_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A multi-label run of every model (4 epochs; the signature model 8, labels from it)."""
    root = tmp_path_factory.mktemp("multi")
    runs = {}
    for model in sorted(MODELS):
        epochs = 8 if model == "signature_attention" else 4
        runs[model] = root / model
        _train(fma_dataset, runs[model], f"model={model}", "task=multi", f"epochs={epochs}")
    return runs


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_multi_label(model: str, multi_runs: dict[str, Path]) -> None:
    metrics = json.loads((multi_runs[model] / "metrics.json").read_text())
    tags = metrics["test"]["tags"]
    for key in ("macro_roc_auc", "micro_roc_auc", "macro_pr_auc", "micro_pr_auc", "macro_f1"):
        assert math.isfinite(tags[key]), key
    assert set(tags["by_level"]) == {"1", "2", "3"}
    assert tags["macro_roc_auc"] > 0.6  # every genre's tone is in its tracks: learnable
    assert "accuracy" not in metrics["test"]  # no single-label head to score


@pytest.fixture(scope="module")
def multi_run(multi_runs: dict[str, Path]) -> Path:
    return multi_runs["signature_attention"]


def test_learnable_tags_score_well_above_chance(multi_run: Path) -> None:
    tags = json.loads((multi_run / "metrics.json").read_text())["test"]["tags"]
    assert tags["macro_roc_auc"] > 0.8 and tags["macro_pr_auc"] > 0.5


@pytest.fixture(scope="module")
def multi_labels(
    multi_run: Path, fma_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("multi-labels") / "labels"
    run_label(
        load_config(LabelConfig, checkpoint=str(multi_run), input=str(fma_dataset), out=str(out))
    )
    return out


def test_labels_carry_thresholded_genres_without_orphans(
    multi_run: Path, multi_labels: Path, fma_dataset: Path
) -> None:
    labels = read_labels(str(multi_labels))
    manifest = json.loads((fma_dataset / "_dataset.json").read_text())
    parents = manifest["labels"]["tag_parents"]
    metrics = json.loads((multi_run / "metrics.json").read_text())
    thresholds = dict(zip(metrics["labels"]["tags"], _thresholds(metrics), strict=True))
    assert labels["genre_tags"].map(len).sum() > 0
    for tags in labels["genre_tags"]:
        names = {t["genre"] for t in tags}
        for t in tags:
            assert parents[t["genre"]] is None or parents[t["genre"]] in names
            assert t["score"] >= thresholds[t["genre"]] - 1e-6
    assert labels["true_genres"].notna().sum() > 0.8 * len(labels)
    assert set(labels["genre"]) <= set(manifest["labels"]["tags"])  # top-k over the tags


def test_labels_from_fmas_own_folders(multi_run: Path, fma: FmaFixture, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    config = load_config(
        LabelConfig,
        overrides=["catalog_options.fma_subset=large", "max_error_rate=0.5"],
        checkpoint=str(multi_run),
        input=str(fma.root),
        out=str(out),
    )
    run_label(config)
    labels = read_labels(str(out))
    (partition,) = (p for p in out.iterdir() if p.name.startswith("run-"))
    errors = pd.concat(pd.read_parquet(f) for f in (partition / "errors").glob("*.parquet"))
    assert len(labels) + len(errors) == len(fma.subsets["large"])
    assert set(errors.loc[errors["kind"] == "no_audio", "track_id"]) == {
        str(t) for t in FAULTS["no_audio"]
    }
    with_genres = labels[labels["true_genres"].notna()]
    assert len(with_genres) > 0.8 * len(labels) and labels["genre_tags"].notna().all()


def test_report_and_compare_show_the_tagging_metrics(
    multi_labels: Path, fma_dataset: Path, tmp_path: Path
) -> None:
    from genreflow.analysis import AnalyzeConfig
    from genreflow.pipelines.analyze import run_analyze
    from genreflow.pipelines.compare import CompareConfig, run_compare

    result = run_analyze(
        load_config(AnalyzeConfig, labels=str(multi_labels), out=str(tmp_path / "report"))
    )
    data = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert data["multi_label"]["tracks"] > 0 and data["multi_label"]["micro_f1"] is not None
    assert "Multi-label genres" in Path(result.report).read_text()
    compared = run_compare(
        load_config(
            CompareConfig,
            overrides=[
                "models=[baseline_cnn]",
                "train.task=multi",
                "train.epochs=1",
                *[f"train.{o}" for o in QUICK],
            ],
            data=str(fma_dataset),
            out=str(tmp_path / "compare"),
        )
    )
    (row,) = compared.rows
    assert row["status"] == "ok" and 0 <= row["tag_map"] <= 1 and row["macro_f1"] is None
    assert "tag_map" in (tmp_path / "compare" / "comparison.md").read_text()


def _thresholds(metrics: dict[str, Any]) -> list[float]:
    from genreflow import checkpoint

    return checkpoint.load_model(metrics["best_checkpoint"]).tag_thresholds


def test_both_heads_train_at_once(fma_dataset: Path, tmp_path: Path) -> None:
    """task=both; its single-label head trains and is scored on the tracks with a
    genre_top only (the others, kept in the dataset, add nothing to that loss)."""
    metrics = _train(fma_dataset, tmp_path / "run", "model=baseline_cnn", "task=both", "epochs=2")
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0  # the single-label head
    assert math.isfinite(metrics["test"]["tags"]["macro_roc_auc"])  # and the multi-label one
    manifest = json.loads((fma_dataset / "_dataset.json").read_text())
    with_top = sum(
        n for g, n in manifest["counts"]["by_split_genre"]["test"].items() if g != "none"
    )
    assert metrics["test"]["count"] == with_top < manifest["counts"]["by_split"]["test"]
