"""The recommended training (configs/train-musicnn.yaml) through the real jobs: ingest
with the musicnn spec, train with the pretrained front end fine-tuned (as the config
ships) or frozen, load the checkpoint with ``weights_only=True`` and label with the
existing label job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genreflow import checkpoint as ckpt
from genreflow.config import load_config
from genreflow.demo_catalog import make_demo_catalog
from genreflow.formats.labels import read_labels
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.models.musicnn import MusicnnFrontend
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.pipelines.train import run_train
from genreflow.pretrained import musicnn as pretrained
from genreflow.train import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

REPO = Path(__file__).resolve().parents[2]
# the musicnn preset with a 9 s clip of three 3 s tokens
MUSICNN_SHORT = [
    "spec.sample_rate=16000", "spec.n_fft=512", "spec.hop_length=256", "spec.n_mels=96",
    "spec.scale=log1p", f"spec.token_s={187 * 256 / 16000}", "spec.clip_s=9", "spec.n_tokens=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def musicnn_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A catalog and its ingest with the musicnn spec (both runs below read it)."""
    root = tmp_path_factory.mktemp("musicnn")
    manifest = make_demo_catalog(
        root / "catalog",
        tracks_per_genre=6,
        artists_per_genre=6,
        duration_s=9.0,
        genres=["ambient", "rock"],
    )
    data = root / "dataset"
    run_ingest(
        load_config(IngestConfig, overrides=MUSICNN_SHORT, catalog=str(manifest), out=str(data))
    )
    return manifest, data


@pytest.mark.parametrize("finetune", [True, False], ids=["as-shipped-fine-tuned", "frozen"])
def test_recommended_config_trains_on_musicnn_and_labels(
    finetune: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, musicnn_data: tuple[Path, Path]
) -> None:
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    manifest, data = musicnn_data
    run = tmp_path / "run"
    run_train(
        load_config(
            TrainConfig,
            REPO / "configs" / "train-musicnn.yaml",
            overrides=["epochs=1", "batch_size=4"]
            + ([] if finetune else ["model_overrides={finetune: false}"]),
            data=str(data),
            out=str(run),
        )
    )
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    # the checkpoint loads with weights_only=True and without the musicnn install
    monkeypatch.setenv(pretrained.WEIGHTS_DIR_ENV, str(tmp_path / "nowhere"))
    loaded = ckpt.load_model(best)
    frontend = getattr(loaded.model, "frontend", None)
    assert isinstance(frontend, MusicnnFrontend) and frontend.trainable == finetune
    monkeypatch.delenv(pretrained.WEIGHTS_DIR_ENV)
    # frozen, the front end the run saved is musicnn's to the bit; fine-tuned, every
    # tensor up to the pooled features the model reads has learned (the dense and tag
    # layers past them get no gradient)
    state = frontend.net.state_dict()
    original = pretrained.pretrained_state("MSD_musicnn")
    unchanged = [name for name, tensor in original.items() if torch.equal(state[name], tensor)]
    if finetune:
        assert [n for n in unchanged if not n.startswith(("dense.", "dense_norm.", "tags."))] == []
    else:
        assert unchanged == list(original)
    labels = tmp_path / "labels"
    result = run_label(
        load_config(LabelConfig, checkpoint=best, input=str(manifest), out=str(labels))
    )
    rows = read_labels(str(labels))
    assert result.labelled == len(rows) == 12 and set(rows["genre"]) <= {"ambient", "rock"}
    assert {len(e) for e in rows["embedding"]} == {frontend.out_dim}
    assert np.allclose([np.linalg.norm(e) for e in rows["embedding"]], 1.0, atol=1e-5)
