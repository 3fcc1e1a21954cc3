from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, log_loss

from genreflow.models.base import ModelOutput
from genreflow.train import balanced_class_weights, batch_loss, classification_metrics


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, 50)
    m = classification_metrics(probs, labels, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2, 3]))
    assert np.array(m["confusion_matrix"]).sum() == 50
    assert set(m["per_class_f1"]) == {"a", "b", "c", "d"}


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
    assert float(with_unknown) == pytest.approx(float(known_only), rel=1e-5)
    none_known = batch_loss(
        out, genre, torch.tensor([-1, -1, -1]), class_weights=None, mood_loss_weight=1.0
    )
    assert torch.isfinite(none_known)
    assert float(none_known) == pytest.approx(
        float(torch.nn.functional.cross_entropy(genre_logits, genre))
    )
