"""Ray Train runs on a small generated catalog: outputs, DDP, crash/resume, bad configs."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss

from genreflow import checkpoint as ckpt
from genreflow.config import load_config
from genreflow.errors import ConfigError, GenreflowError, SpecMismatchError
from genreflow.formats.dataset import tokens_numpy
from genreflow.ingest import IngestConfig
from genreflow.models import MODELS
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.train import (
    CRASH_AFTER_EPOCH_ENV,
    SNAPSHOT_FILE,
    _newest_loadable_checkpoint,
    drop_cut_snapshot,
    run_train,
)
from genreflow.tokens import TokenSpec
from genreflow.train import TrainConfig
from tests.faults import GENREFLOW, kill_when, temporary_files
from tests.pipelines.conftest import TRAINED_RUN

pytestmark = pytest.mark.usefixtures("ray_session")


def train(data: Path, out: Path, *overrides: str) -> Any:
    base = ["epochs=2", "batch_size=8", "lr=0.003", "resources.cpus_per_worker=1"]
    return run_train(
        load_config(TrainConfig, overrides=[*base, *overrides], data=str(data), out=str(out))
    )


def epochs_done(out: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["epoch"] for p in (out / "epochs").glob("epoch-*.json"))


def test_a_run_writes_metrics_and_a_loadable_best_checkpoint(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    result = train(dataset, out, "model=multitask_attention_cnn")
    metrics = json.loads((out / "metrics.json").read_text())
    # the reported test metrics are the best checkpoint's on the test split, recomputed
    # here with a plain forward pass and scikit-learn's metrics
    shards = pq.read_table(dataset / "shards", columns=["split", "genre_idx", "tokens"])
    test = shards.filter(pc.equal(shards["split"], "test"))
    best = ckpt.load_model(metrics["best_checkpoint"])
    with torch.no_grad():
        x = torch.from_numpy(tokens_numpy(test.column("tokens")).astype(np.float32))
        probs = torch.softmax(best.model(x).genre_logits, dim=1).numpy()
    truth = test.column("genre_idx").to_numpy()
    assert metrics["test"]["count"] == test.num_rows > 0
    assert metrics["test"]["accuracy"] == pytest.approx(
        accuracy_score(truth, probs.argmax(1)), abs=1e-6
    )
    assert metrics["test"]["macro_f1"] == pytest.approx(
        f1_score(truth, probs.argmax(1), average="macro", labels=np.unique(truth), zero_division=0),
        abs=1e-6,
    )
    assert metrics["test"]["log_loss"] == pytest.approx(
        log_loss(truth, probs, labels=range(3)), rel=1e-3
    )
    assert "mood" in metrics["test"]  # the multitask model's mood head is evaluated too
    assert epochs_done(out) == [0, 1]
    # where it trained is recorded beside the config, which stays as it was written
    assert metrics["device"] == "cpu" and metrics["config"]["resources"]["use_gpu"] == "auto"
    epoch = json.loads((out / "epochs" / "epoch-0001.json").read_text())
    n_train = json.loads((dataset / "_dataset.json").read_text())["counts"]["by_split"]["train"]
    assert epoch["steps"] == math.ceil(n_train / 8)  # the one worker saw the whole split
    assert {
        "train_loss",
        "val_accuracy",
        "val_macro_f1",
        "val_log_loss",
        "val_per_class_f1",
        "data_wait_seconds",
        "cpu_seconds",
    } <= set(epoch)
    # the worker keeps an ordinary process's priority (Ray's default adds 15), one thread a CPU
    assert (epoch["niceness"], epoch["torch_threads"]) == (os.nice(0), 1)
    # the worker's CPU time over the steps: more than none, at most every core throughout
    assert 0 < epoch["cpu_seconds"] <= (os.cpu_count() or 1) * epoch["train_seconds"] + 0.5
    loaded = ckpt.load_model(metrics["best_checkpoint"])  # weights_only=True inside
    # the checkpoint keeps torch's RNG state, so a resumed run continues its random stream
    assert ckpt.load(metrics["best_checkpoint"])["torch_rng"].dtype == torch.uint8
    assert loaded.version == metrics["model_version"] == result.metrics["model_version"]
    assert loaded.genres == ["ambient", "electronic", "rock"]
    assert (out / "confusion_matrix.csv").read_text().startswith("true,ambient")
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SpecMismatchError, match=r"checkpoint .* differs from the dataset.*n_mels"):
        ckpt.load_model(
            metrics["best_checkpoint"], expected_spec=TokenSpec(), data_name="the dataset"
        )
    with pytest.raises(ConfigError, match="already holds a run"):
        train(dataset, out)
    # a later genreflow that changes the preset still rebuilds the model the run trained
    tiny = MODELS["multitask_attention_cnn"].presets["tiny"]
    monkeypatch.setitem(tiny, "channels", [4, 8, 16, 32])
    again = ckpt.load_model(metrics["best_checkpoint"])
    assert again.version == loaded.version
    # a checkpoint without its hyperparameters (written before they were recorded) says so
    old = ckpt.load(metrics["best_checkpoint"])
    del old["model"]["hyperparameters"]
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(GenreflowError, match="does not fit the multitask_attention_cnn model"):
        ckpt.load_model(str(tmp_path / "old.pt"))


def test_two_workers_train_with_ddp_and_stay_identical(dataset: Path, tmp_path: Path) -> None:
    """The lyrics model under DDP: its text branch gets no gradient from a batch without
    lyrics, which DDP must allow for. (Signature attention trains with three workers in
    tests/cluster/test_multinode.py.)"""
    shards = pd.read_parquet(dataset / "shards", columns=["split", "lyrics"])
    with_lyrics = shards[shards["split"] == "train"]["lyrics"].notna()
    assert with_lyrics.any() and not with_lyrics.all()  # batches with and without lyrics
    out = tmp_path / "ddp"
    # cache=never: the splits stream from the shards through Ray Data every epoch (the
    # path of catalogs too large for the object store)
    overrides = [
        "resources.num_workers=2",
        "resources.cpus_per_worker=0.5",
        "epochs=1",
        "resources.cache=never",
    ]
    train(dataset, out, *overrides, "resources.worker_niceness=3", "model=multimodal_han")
    epoch = json.loads((out / "epochs" / "epoch-0000.json").read_text())
    assert epoch["replicas_in_sync"] is True
    assert epoch["niceness"] == os.nice(0) + 3
    assert epoch["steps"] >= 1


def final_weights(run: Path, epoch: int | None = None) -> dict[str, torch.Tensor]:
    """The weights of a run's last epoch (its newest checkpoint by epoch), or of ``epoch``."""
    folders = (run / "checkpoints" / "run").glob("checkpoint_*")
    states = [ckpt.load(str(p)) for p in folders if p.is_dir()]
    if epoch is not None:
        states = [state for state in states if int(state["epoch"]) == epoch]
    return max(states, key=lambda state: int(state["epoch"]))["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_worker_killed_after_epoch_one_resumes_at_epoch_two(
    dataset: Path, tmp_path: Path, trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train restarts a dead worker from the last checkpoint; the run ends with the
    weights of an uninterrupted one (deterministic, one worker)."""
    monkeypatch.setenv(CRASH_AFTER_EPOCH_ENV, "0")
    crashed = train(dataset, tmp_path / "crashed", "resources.max_failures=1", *TRAINED_RUN)
    assert epochs_done(tmp_path / "crashed") == [0, 1]
    history = crashed.metrics["history"]
    assert [h["epoch"] for h in history] == [0, 1]  # epoch 0 was not trained twice
    assert_same_weights(final_weights(tmp_path / "crashed"), final_weights(trained_run))
    clean = json.loads((trained_run / "metrics.json").read_text())  # same config, no crash
    assert crashed.metrics["test"]["log_loss"] == clean["test"]["log_loss"]


def test_a_killed_driver_resumes_to_the_same_weights(
    dataset: Path, tmp_path: Path, trained_run: Path
) -> None:
    """SIGKILL of the train command (driver, its local Ray, the worker) in epoch 1, its
    epoch-0 checkpoint registered; ``--resume`` reaches the weights of an uninterrupted
    run of the same seed, to the bit (one CPU worker, deterministic algorithms), and
    continues past them when given more epochs."""
    out = tmp_path / "run"
    snapshot = out / "checkpoints" / "run" / SNAPSHOT_FILE

    def epoch_zero_registered() -> bool:  # the snapshot whole, not mid-write
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"]) >= 1
        except (OSError, ValueError, KeyError):
            return False

    cmd = [*GENREFLOW, "train", "--data", str(dataset), "--out", str(out), *TRAINED_RUN,
           "resources.num_cpus=2"]  # fmt: skip
    assert kill_when(cmd, epoch_zero_registered)
    assert not (out / "metrics.json").exists() and not temporary_files(out)
    resumed = train(dataset, out, *TRAINED_RUN, "resume=true", "epochs=3")
    assert epochs_done(out) == [0, 1, 2] and resumed.metrics["epochs_run"] == 3
    assert [h["epoch"] for h in resumed.metrics["history"]] == [0, 1, 2]
    assert_same_weights(final_weights(out, epoch=1), final_weights(trained_run))


def test_a_resume_skips_what_a_kill_cut_short(
    dataset: Path, tmp_path: Path, trained_run: Path
) -> None:
    """A kill while Ray copied a checkpoint in, or rewrote its checkpoint list, leaves a
    cut file; a resume skips the one and drops the other instead of failing on them."""
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    config = load_config(TrainConfig, overrides=["resume=true"], data=str(dataset), out=str(out))
    newest, state = _newest_loadable_checkpoint(config)
    assert newest is not None and state is not None
    cut = out / "checkpoints" / "run" / "checkpoint_9999-12-31_23-59-59.000000"
    cut.mkdir()
    (cut / "model.pt").write_bytes((Path(newest) / "model.pt").read_bytes()[:100])
    assert _newest_loadable_checkpoint(config)[0] == newest
    snapshot = out / "checkpoints" / "run" / SNAPSHOT_FILE
    assert not drop_cut_snapshot(config) and snapshot.exists()  # a whole one stays
    snapshot.write_text(snapshot.read_text()[:50])
    assert drop_cut_snapshot(config) and not snapshot.exists()


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model=resnet"], "unknown model 'resnet'"),
        (["resources.num_workers=0"], "resources.num_workers must be >= 1"),
        (["resources.use_gpu=true"], r"needs 1 CPU, 1 GPU, and this local Ray has \d+ CPU, 0 GPU"),
        (["preset=huge"], "no preset 'huge'"),
    ],
)
def test_bad_configs_fail_before_any_worker(
    dataset: Path, tmp_path: Path, overrides: list[str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        train(dataset, tmp_path / "run", *overrides)
    assert not (tmp_path / "run" / "epochs").exists()


def test_missing_data_and_an_empty_split_are_refused(tmp_path: Path, small_manifest: Path) -> None:
    with pytest.raises(ConfigError, match="not a finished genreflow dataset"):
        train(tmp_path / "nothing", tmp_path / "run")
    only_train = pd.read_csv(small_manifest).assign(split="train")
    only_train.to_csv(small_manifest, index=False)
    data = tmp_path / "data"
    run_ingest(load_config(IngestConfig, catalog=str(small_manifest), out=str(data)))
    with pytest.raises(ConfigError, match="no rows in its 'val' split"):
        train(data, tmp_path / "run")


def test_k_fold_cross_validation_reports_mean_and_std(dataset: Path, tmp_path: Path) -> None:
    result = train(dataset, tmp_path / "cv", "folds=2", "epochs=1", "model=baseline_cnn")
    cv = result.metrics["cross_validation"]
    assert cv["folds"] == 2 and len(cv["macro_f1"]) == 2
    assert cv["macro_f1_mean"] == pytest.approx(sum(cv["macro_f1"]) / 2)
    assert (tmp_path / "cv" / "fold-0" / "epochs" / "epoch-0000.json").exists()
    assert "CV macro-F1" in result.summary()


def test_a_poll_interval_must_be_positive() -> None:
    # the interval's effect on the environment: tests/test_ray_compat.py
    with pytest.raises(ConfigError, match=r"resources\.health_check_s must be > 0"):
        load_config(TrainConfig, overrides=["resources.health_check_s=0"])


def _rows(ds: Any) -> list[tuple[int, bytes]]:
    """A prepared split's (genre, tokens) rows, from a Ray dataset or a small split's table."""
    import pyarrow as pa

    from genreflow.pipelines.train_data import TableShard

    if isinstance(ds, pa.Table):
        rows = [
            {"genre_idx": g, "tokens": t}
            for batch in TableShard(ds, 0, 1).batches(1024, seed=None)
            for g, t in zip(batch["genre_idx"], batch["tokens"], strict=True)
        ]
    else:
        rows = ds.take_all()
    return sorted((int(r["genre_idx"]), np.asarray(r["tokens"]).tobytes()) for r in rows)


def test_every_way_of_building_the_datasets_holds_the_same_rows(dataset: Path) -> None:
    """Small splits prepared on the driver, splits streamed through Ray Data, and splits
    materialized: one splitting rule (``Part``) chooses their rows, for a run and for each
    cross-validation fold."""
    from genreflow.formats.dataset import read_dataset_manifest
    from genreflow.pipelines.train_data import setup_data
    from genreflow.train import RUN_PARTS, fold_parts

    manifest = read_dataset_manifest(str(dataset))
    shards = pd.read_parquet(dataset / "shards", columns=["split"])
    for parts in (RUN_PARTS, fold_parts(0, 2), fold_parts(1, 2)):
        built = {
            way: setup_data(
                load_config(TrainConfig, overrides=[f"resources.cache={way}"], data=str(dataset)),
                manifest,
                None,
                parts,
            )
            for way in ("auto", "never", "always")  # driver, streamed, materialized
        }
        for name, part in parts.items():
            rows = [_rows(built[way][name]) for way in ("auto", "never", "always")]
            assert rows[0] == rows[1] == rows[2]
            if part.fold is None:
                assert len(rows[0]) == int((shards["split"] == part.split).sum())
    folds = [fold_parts(k, 2) for k in range(2)]
    config = load_config(TrainConfig, data=str(dataset))
    held_out = [len(_rows(setup_data(config, manifest, None, f)["val"])) for f in folds]
    assert sum(held_out) == int((shards["split"] == "train").sum())  # each row held out once


def test_an_epoch_reads_each_splits_rows_once_from_shards_of_its_own(dataset: Path) -> None:
    """Ingest writes each split to shards of its own and the manifest says which: training
    reads the validation split without opening a training shard, and the three splits'
    shards together are the dataset, each row once."""
    import pyarrow.parquet as pq

    from genreflow.formats.dataset import read_dataset_manifest, split_shards
    from genreflow.pipelines.train_data import read_split

    manifest = read_dataset_manifest(str(dataset))
    config = load_config(TrainConfig, overrides=["resources.cache=never"], data=str(dataset))
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        files = split_shards(str(dataset), manifest, [split])
        assert files and not seen & set(files)
        seen |= set(files)
        splits = pq.ParquetDataset(files).read(columns=["split"]).column("split").to_pylist()
        assert set(splits) == {split}
        assert len(splits) == manifest["counts"]["by_split"][split]
        read = read_split(config, split, lyrics=False)
        assert sorted(Path(f).name for f in read.input_files()) == sorted(
            Path(f).name for f in files
        )
        assert read.count() == manifest["counts"]["by_split"][split]
    assert seen == {str(f) for f in (dataset / "shards").glob("*.parquet")}


def test_the_test_split_scored_here_equals_the_actor_pools_scores(
    dataset: Path, trained_checkpoint: str
) -> None:
    """A small test split is scored in the job's process; a large one (or
    ``resources.score_local_s=0``) by an actor pool beside its rows: the same numbers."""
    from genreflow.formats.dataset import read_dataset_manifest
    from genreflow.pipelines.train import score_split
    from genreflow.pipelines.train_data import setup_data
    from genreflow.train import RUN_PARTS

    manifest = read_dataset_manifest(str(dataset))
    tracks = manifest["counts"]["by_split"]["test"]
    scores = {}
    for seconds in (20.0, 0.0):
        config = load_config(
            TrainConfig, overrides=[f"resources.score_local_s={seconds}"], data=str(dataset)
        )
        test = setup_data(config, manifest, None, RUN_PARTS)["test"]
        scores[seconds] = score_split(
            test, trained_checkpoint, config, use_gpu=False, tracks=tracks
        )
    from genreflow.pipelines.train import _scores_here

    small = load_config(TrainConfig, data=str(dataset))  # the default: scored here
    assert _scores_here(ckpt.load_model(trained_checkpoint), small, tracks)
    here, pool = scores[20.0], scores[0.0]
    assert set(here) == set(pool) and len(here["genre"]) == tracks > 0
    for key in here:
        np.testing.assert_allclose(here[key], pool[key], atol=1e-5)
