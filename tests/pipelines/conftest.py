"""Shared fixtures of the pipeline tests: a small ingested dataset, a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genreflow.config import load_config
from genreflow.demo_catalog import make_demo_catalog
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.pipelines.train import run_train
from genreflow.train import TrainConfig
from tests.conftest import build_once

SMALL_SPEC = ["spec.clip_s=8", "spec.n_tokens=4", "spec.token_s=2.0", "spec.n_mels=64"]
# the trained_run fixture's settings: a run with these resumes to its weights to the bit
TRAINED_RUN = ["epochs=2", "batch_size=8", "lr=0.003", "deterministic=true"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    def build(root: Path) -> None:
        manifest = make_demo_catalog(
            root / "catalog",
            tracks_per_genre=10,
            artists_per_genre=10,
            duration_s=8.0,
            genres=["ambient", "electronic", "rock"],
        )
        overrides = SMALL_SPEC
        run_ingest(
            load_config(
                IngestConfig, overrides=overrides, catalog=str(manifest), out=str(root / "dataset")
            )
        )

    return build_once(tmp_path_factory, "train-data", build) / "dataset"


@pytest.fixture(scope="session")
def trained_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run of the tiny signature model (the training defaults,
    deterministic: the crash tests resume to its weights)."""

    def build(root: Path) -> None:
        config = load_config(
            TrainConfig, overrides=TRAINED_RUN, data=str(dataset), out=str(root / "run")
        )
        run_train(config)

    return build_once(tmp_path_factory, "trained", build) / "run"


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run: Path) -> str:
    return str(json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"])


@pytest.fixture(scope="session")
def labels(
    trained_checkpoint: str, dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One finished label run of the trained checkpoint over the dataset's shards."""

    def build(root: Path) -> None:
        config = load_config(
            LabelConfig, checkpoint=trained_checkpoint, input=str(dataset), out=str(root / "labels")
        )
        run_label(config)

    return build_once(tmp_path_factory, "index-labels", build) / "labels"
