from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, log_loss

from genreflow.config import load_config
from genreflow.errors import ConfigError
from genreflow.models.base import ModelOutput
from genreflow.pipelines.train_data import prefetch_batches
from genreflow.resources import TrainResources
from genreflow.train import (
    TrainConfig,
    balanced_class_weights,
    batch_loss,
    classification_metrics,
    tensor_batch,
)


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, 50)
    m = classification_metrics(probs, labels, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2, 3]))
    assert m["confusion_matrix"] == confusion_matrix(labels, probs.argmax(1)).tolist()
    assert set(m["per_class_f1"]) == {"a", "b", "c", "d"}


def test_per_class_f1_matches_sklearn_with_unpredicted_and_absent_classes() -> None:
    # class 2 is never predicted, class 3 neither occurs nor is predicted
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    predicted = np.array([0, 1, 1, 1, 0, 1, 0])
    probs = np.eye(4)[predicted] * 0.7 + 0.075
    m = classification_metrics(probs, labels, ["a", "b", "c", "d"])
    expected = f1_score(labels, predicted, labels=[0, 1, 2, 3], average=None, zero_division=0)
    assert list(m["per_class_f1"].values()) == pytest.approx(expected)
    assert m["macro_f1"] == pytest.approx(expected[:3].mean())  # over the classes present
    assert (
        m["confusion_matrix"] == confusion_matrix(labels, predicted, labels=[0, 1, 2, 3]).tolist()
    )


def test_unknown_labels_are_ignored() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    m = classification_metrics(probs, np.array([0, 1, -1]), ["x", "y"])
    assert m["count"] == 2 and m["accuracy"] == 1.0


def test_balanced_class_weights() -> None:
    w = balanced_class_weights({"a": 30, "b": 10}, ["a", "b", "c"])
    assert (
        w[0] == pytest.approx(40 / (2 * 30))
        and w[1] == pytest.approx(40 / (2 * 10))
        and w[2] == 1.0
    )


def test_a_track_without_mood_adds_no_mood_loss() -> None:
    genre_logits = torch.randn(3, 4)
    mood_logits = torch.randn(3, 3, requires_grad=True)
    out = ModelOutput(genre_logits, mood_logits, None, torch.zeros(3, 2))
    genre = torch.tensor([0, 1, 2])
    with_unknown = batch_loss(
        out, genre, torch.tensor([2, 0, -1]), class_weights=None, mood_loss_weight=1.0
    )
    with_unknown.backward()
    assert torch.all(mood_logits.grad[2] == 0)  # type: ignore[index]
    known_only = torch.nn.functional.cross_entropy(
        genre_logits, genre
    ) + torch.nn.functional.cross_entropy(mood_logits[:2], torch.tensor([2, 0]))
    assert with_unknown.item() == pytest.approx(known_only.item(), rel=1e-5)
    none_known = batch_loss(
        out, genre, torch.tensor([-1, -1, -1]), class_weights=None, mood_loss_weight=1.0
    )
    assert torch.isfinite(none_known)
    assert none_known.item() == pytest.approx(
        torch.nn.functional.cross_entropy(genre_logits, genre).item()
    )


def test_batches_are_made_in_line_on_cpu_and_ahead_on_gpu() -> None:
    default = TrainConfig()
    assert prefetch_batches(default, torch.device("cpu")) == 0
    assert prefetch_batches(default, torch.device("cuda")) == 1
    assert (
        prefetch_batches(
            TrainConfig(resources=TrainResources(prefetch_batches=3)), torch.device("cpu")
        )
        == 3
    )
    with pytest.raises(ConfigError, match=r"resources\.prefetch_batches must be >= 0"):
        load_config(TrainConfig, overrides=["resources.prefetch_batches=-1"])


def test_cpu_batches_arrive_as_float32_and_gpu_batches_as_sent() -> None:
    rows = {
        "tokens": np.arange(24, dtype=np.float16).reshape(2, 3, 4),
        "genre_idx": np.array([1, 0], dtype=np.int32),
        "mood_idx": np.array([-1, 2]),
    }
    cpu = tensor_batch(rows, float_tokens=True)
    assert cpu["tokens"].dtype == torch.float32 and cpu["tokens"].shape == (2, 3, 4)
    assert torch.equal(cpu["tokens"], torch.arange(24, dtype=torch.float32).reshape(2, 3, 4))
    assert cpu["genre_idx"].dtype == cpu["mood_idx"].dtype == torch.long
    assert cpu["mood_idx"].tolist() == [-1, 2]
    gpu = tensor_batch(rows, float_tokens=False)  # float16 over the bus, cast on device
    assert gpu["tokens"].dtype == torch.float16


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a one-core OpenMP team starts no threads")
def test_batches_are_converted_without_starting_torch_threads() -> None:
    """The iterator converts batches in its own threads; a torch conversion there would
    start a second OpenMP team beside the training step's (see tensor_batch)."""
    rows = {"tokens": np.ones((64, 10, 128, 172), dtype=np.float16), "genre_idx": np.zeros(64)}
    converted, release = threading.Event(), threading.Event()

    def convert() -> None:  # a thread that lives on after converting, as the iterator's do
        tensor_batch(rows, float_tokens=True)
        converted.set()
        release.wait(timeout=30)

    before = set(os.listdir("/proc/self/task"))
    worker = threading.Thread(target=convert)
    worker.start()
    try:
        assert converted.wait(timeout=30)
        started = set(os.listdir("/proc/self/task")) - before
    finally:
        release.set()
        worker.join()
    assert started == {str(worker.native_id)}


def test_every_epoch_and_worker_shuffles_with_its_own_seed() -> None:
    from genreflow.train import epoch_seed

    seeds = {(e, r): epoch_seed(7, e, r) for e in range(50) for r in range(4)}
    assert len(set(seeds.values())) == len(seeds)  # no two epochs or workers alike
    assert all(0 <= s < 2**31 for s in seeds.values())
    assert epoch_seed(7, 3, 1) == seeds[(3, 1)]  # the same run seed: the same order
    assert epoch_seed(8, 3, 1) != seeds[(3, 1)]
