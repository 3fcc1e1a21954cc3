"""Multi-label metrics, thresholds and hierarchy-consistent tags against references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from genreflow.multilabel import (
    average_precision,
    best_thresholds,
    consistent_tags,
    pos_weights,
    roc_auc,
    tagging_metrics,
)
from genreflow.taxonomy import Taxonomy


def _data(seed: int, n: int = 80, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < 0.3).astype(np.uint8)
    targets[:, -1] = 0  # a genre no track carries: left out of the macro averages
    probs = np.clip(0.5 * targets + rng.random((n, k)) * 0.7, 0, 1).round(2)  # ties too
    return probs, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learns(seed: int) -> None:
    probs, targets = _data(seed)
    for j in range(probs.shape[1] - 1):
        assert roc_auc(probs[:, j], targets[:, j]) == pytest.approx(
            roc_auc_score(targets[:, j], probs[:, j])
        )
        assert average_precision(probs[:, j], targets[:, j]) == pytest.approx(
            average_precision_score(targets[:, j], probs[:, j])
        )
    titles = [f"g{j}" for j in range(probs.shape[1])]
    thresholds = np.full(probs.shape[1], 0.5, dtype=np.float32)
    m = tagging_metrics(probs, targets, titles, thresholds=thresholds)
    present = targets.sum(axis=0) > 0
    assert m["macro_roc_auc"] == pytest.approx(
        roc_auc_score(targets[:, present], probs[:, present], average="macro")
    )
    assert m["micro_roc_auc"] == pytest.approx(roc_auc_score(targets, probs, average="micro"))
    assert m["macro_pr_auc"] == pytest.approx(
        average_precision_score(targets[:, present], probs[:, present], average="macro")
    )
    assert m["micro_pr_auc"] == pytest.approx(
        average_precision_score(targets, probs, average="micro")
    )
    predicted = (probs >= 0.5).astype(int)
    assert m["micro_f1"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert m["macro_f1"] == pytest.approx(
        f1_score(targets[:, present], predicted[:, present], average="macro", zero_division=0)
    )
    assert m["per_genre"]["g5"]["roc_auc"] is None and m["per_genre"]["g5"]["support"] == 0


def test_thresholds_maximise_f1_on_validation() -> None:
    probs, targets = _data(3)
    chosen = best_thresholds(probs, targets)
    for j in range(probs.shape[1] - 1):
        best = f1_score(targets[:, j], probs[:, j] >= chosen[j])
        for candidate in np.unique(probs[:, j]):  # no threshold does better
            assert f1_score(targets[:, j], probs[:, j] >= candidate) <= best + 1e-9
    assert chosen[-1] == 0.5  # no positive: the default


def test_rare_genres_weigh_more_within_the_cap() -> None:
    w = pos_weights([50, 10, 1, 0], 100, cap=5.0)
    assert w[0] == 1.0 and 1.0 < w[1] < w[2] <= 5.0 and w[3] == 1.0


def test_tags_never_hold_a_child_without_its_parent() -> None:
    parents = {"Rock": None, "Metal": "Rock", "Death-Metal": "Metal", "Jazz": None}
    titles = ["Rock", "Metal", "Death-Metal", "Jazz"]
    thresholds = np.full(4, 0.5)
    # Death-Metal and Metal above, Rock below: neither child may stand without Rock
    tags = consistent_tags(np.array([0.4, 0.9, 0.8, 0.6]), titles, thresholds, parents)
    assert [t["genre"] for t in tags] == ["Jazz"]
    tags = consistent_tags(np.array([0.7, 0.9, 0.3, 0.1]), titles, thresholds, parents)
    assert [t["genre"] for t in tags] == ["Metal", "Rock"]


def test_taxonomy_closes_upwards_and_refuses_cycles() -> None:
    tax = Taxonomy(("Rock", "Metal", "Death-Metal"), {"Metal": "Rock", "Death-Metal": "Metal"})
    assert tax.close(["Death-Metal"]) == ["Rock", "Metal", "Death-Metal"]
    assert tax.depths() == {"Rock": 1, "Metal": 2, "Death-Metal": 3}
    from genreflow.errors import CatalogError

    with pytest.raises(CatalogError, match="cycle"):
        Taxonomy(("A", "B"), {"A": "B", "B": "A"})
