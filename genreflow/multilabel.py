"""Multi-label genre tagging: the loss's class weights, per-genre thresholds, the
metrics music tagging reports, and hierarchy-consistent tags. Pure numpy; no Ray, no torch.

Metrics follow scikit-learn's definitions (the tests check them against it): ROC-AUC by
the rank statistic with ties averaged, average precision as the step-wise area under
the precision-recall curve, F1 at each genre's threshold. Macro averages run over the
genres a set has both positives and negatives of (an AUC of a genre no track carries
is undefined); micro averages pool every (track, genre) pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

DEFAULT_THRESHOLD = 0.5  # a genre validation has no positive of keeps this


def pos_weights(positives: Sequence[int], total: int, *, cap: float) -> np.ndarray:
    """Per-genre weight of a positive in the binary cross-entropy: ``sqrt(neg / pos)``,
    between 1 and ``cap``. A rare genre's few positives count more without letting a
    genre of three tracks dominate the loss (the long tail of FMA's 161 genres)."""
    pos = np.asarray(positives, dtype=np.float64)
    ratio = np.divide(total - pos, pos, out=np.ones_like(pos), where=pos > 0)
    return np.clip(np.sqrt(np.maximum(ratio, 0.0)), 1.0, cap).astype(np.float32)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of one genre (``[n]`` scores, ``[n]`` 0/1); NaN without both classes."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of one genre: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
    score thresholds, best first; NaN without a positive."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each threshold
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per genre, the score threshold that maximises F1 on ``probs [n, k]`` against
    ``targets [n, k]`` (validation): midway between the chosen score and the next
    lower one. :data:`DEFAULT_THRESHOLD` for a genre without a positive."""
    k = probs.shape[1]
    thresholds = np.full(k, DEFAULT_THRESHOLD, dtype=np.float32)
    for j in range(k):
        y = targets[:, j].astype(bool)
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        order = np.argsort(-probs[:, j], kind="mergesort")
        s, yy = probs[order, j], y[order]
        last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
        tp = np.cumsum(yy)[last]
        predicted = last + 1
        f1 = 2 * tp / (predicted + n_pos)
        best = int(np.argmax(f1))
        below = s[last[best] + 1] if last[best] + 1 < len(s) else 0.0
        thresholds[j] = float((s[last[best]] + below) / 2)
    return thresholds


def f1_at(
    probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, float]:
    """Per-genre F1 (NaN for a genre no track has nor is predicted) and micro F1."""
    predicted = probs >= thresholds[None, :]
    truth = targets.astype(bool)
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    support = predicted.sum(axis=0) + truth.sum(axis=0)
    per = np.divide(2 * tp, support, out=np.full(len(tp), np.nan), where=support > 0)
    total = support.sum()
    micro = float(2 * tp.sum() / total) if total else float("nan")
    return per, micro


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def tagging_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    titles: Sequence[str],
    *,
    thresholds: np.ndarray,
    depths: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The multi-label metrics of ``probs [n, k]`` (sigmoid scores) against ``targets``
    ``[n, k]`` (0/1) of tracks that have a multi-label target: macro and micro ROC-AUC,
    macro and micro average precision (``macro_pr_auc`` is mAP), macro and micro F1 at
    ``thresholds``, the same macros per hierarchy level (``depths``: genre -> 1 for a
    root), and per genre ``roc_auc, pr_auc, f1, threshold, support``."""
    n, k = targets.shape
    if n == 0:
        return {"count": 0}
    auc = np.array([roc_auc(probs[:, j], targets[:, j]) for j in range(k)])
    ap = np.array([average_precision(probs[:, j], targets[:, j]) for j in range(k)])
    f1, micro_f1 = f1_at(probs, targets, thresholds)
    has_pos = targets.sum(axis=0) > 0
    metrics: dict[str, Any] = {
        "count": int(n),
        "genres_present": int(has_pos.sum()),
        "macro_roc_auc": _mean(auc),
        "micro_roc_auc": roc_auc(probs.ravel(), targets.ravel()),
        "macro_pr_auc": _mean(ap),
        "micro_pr_auc": average_precision(probs.ravel(), targets.ravel()),
        "macro_f1": _mean(np.where(has_pos, f1, np.nan)),
        "micro_f1": micro_f1,
    }
    if depths:
        by_level: dict[str, dict[str, float]] = {}
        for level in sorted(set(depths.values())):
            cols = np.array([depths.get(t) == level for t in titles])
            by_level[str(level)] = {
                "genres": int(cols.sum()),
                "macro_roc_auc": _mean(auc[cols]),
                "macro_pr_auc": _mean(ap[cols]),
                "macro_f1": _mean(np.where(has_pos & cols, f1, np.nan)),
            }
        metrics["by_level"] = by_level
    metrics["per_genre"] = {
        t: {
            "roc_auc": None if np.isnan(auc[j]) else float(auc[j]),
            "pr_auc": None if np.isnan(ap[j]) else float(ap[j]),
            "f1": None if np.isnan(f1[j]) else float(f1[j]),
            "threshold": float(thresholds[j]),
            "support": int(targets[:, j].sum()),
        }
        for j, t in enumerate(titles)
    }
    return metrics


def consistent_tags(
    scores: np.ndarray,
    titles: Sequence[str],
    thresholds: np.ndarray,
    parents: Mapping[str, str | None],
) -> list[dict[str, float | str]]:
    """The genres of one track at or above their thresholds whose every ancestor is too
    (no child without its parent), best score first: ``[{genre, score}]``."""
    above = {t for t, s, th in zip(titles, scores, thresholds, strict=True) if s >= th}

    def rooted(title: str) -> bool:
        node = parents.get(title)
        while node is not None:
            if node not in above:
                return False
            node = parents.get(node)
        return True

    kept = [(t, float(s)) for t, s in zip(titles, scores, strict=True) if t in above and rooted(t)]
    kept.sort(key=lambda ts: -ts[1])
    return [{"genre": t, "score": s} for t, s in kept]


class TagTally:
    """Counts of thresholded genre tags against the catalog's genre lists, track by track
    (the report's multi-label scores, from label rows alone: bounded by the genres)."""

    def __init__(self) -> None:
        self.tp: dict[str, int] = {}
        self.fp: dict[str, int] = {}
        self.fn: dict[str, int] = {}
        self.tracks = 0

    def add(self, predicted: Sequence[str], truth: Sequence[str]) -> None:
        p, t = set(predicted), set(truth)
        for g in p & t:
            self.tp[g] = self.tp.get(g, 0) + 1
        for g in p - t:
            self.fp[g] = self.fp.get(g, 0) + 1
        for g in t - p:
            self.fn[g] = self.fn.get(g, 0) + 1
        self.tracks += 1

    def summary(self) -> dict[str, Any]:
        """``tracks``, ``micro_f1``, ``macro_f1`` (over genres the tracks carry) and
        per genre ``precision, recall, f1, support``."""
        genres = sorted(set(self.tp) | set(self.fp) | set(self.fn))
        per: dict[str, dict[str, float | int | None]] = {}
        for g in genres:
            tp, fp, fn = self.tp.get(g, 0), self.fp.get(g, 0), self.fn.get(g, 0)
            per[g] = {
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "f1": 2 * tp / (2 * tp + fp + fn),
                "support": tp + fn,
            }
        tp, fp, fn = (sum(d.values()) for d in (self.tp, self.fp, self.fn))
        carried = [float(per[g]["f1"] or 0.0) for g in genres if per[g]["support"]]
        return {
            "tracks": self.tracks,
            "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "macro_f1": float(np.mean(carried)) if carried else None,
            "per_genre": per,
        }
