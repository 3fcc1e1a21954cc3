"""Genre analysis over attention signatures (paper 000, section 3.2). Pure numpy.

A genre's embedding is the mean of its tracks' L2-normalised signatures, minus the
catalog's mean signature (the component every track shares, which otherwise makes all
genres look alike), normalised again; genres are compared by cosine similarity. An
analogy counts only where it beats the same analogies over shuffled genre labels
(:func:`analogy_null`). Everything here accumulates over streamed batches, so the
catalog never sits in memory at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from genreflow.config import path_field


@dataclass
class GenreAccumulator:
    """Running sums of signatures per genre, and over the whole catalog."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    total: np.ndarray | None = None
    tracks: int = 0
    squared_norms: float = 0.0

    def add(self, genres: Sequence[str | None], vectors: np.ndarray) -> None:
        """Add ``vectors`` ``[n, dim]``; every row counts towards the catalog mean, rows
        whose genre is None towards no genre."""
        if len(vectors):
            batch = np.asarray(vectors, dtype=np.float64).sum(axis=0)
            self.total = batch if self.total is None else self.total + batch
            self.tracks += len(vectors)
            self.squared_norms += float(np.square(np.asarray(vectors, np.float64)).sum())
        for genre, vector in zip(genres, vectors, strict=True):
            if genre is None:
                continue
            if genre in self.sums:
                self.sums[genre] += vector
            else:
                self.sums[genre] = np.array(vector, dtype=np.float64)
            self.counts[genre] = self.counts.get(genre, 0) + 1

    def mean(self) -> np.ndarray:
        """The catalog's mean signature ``[dim]``."""
        if self.total is None:
            return np.zeros(0)
        return self.total / self.tracks

    def shared_fraction(self) -> float:
        """How much of the signatures' second moment the shared (mean) component holds:
        ``|mean|^2 / mean(|x|^2)``, 1 when every track has the same signature."""
        if not self.tracks or self.squared_norms == 0:
            return 0.0
        return float(np.square(self.mean()).sum() / (self.squared_norms / self.tracks))

    def embeddings(
        self, *, max_genres: int | None = None, centre: bool = True
    ) -> tuple[list[str], np.ndarray]:
        """Genre names (largest first, then by name) and their unit embeddings ``[g, dim]``,
        each genre's mean minus the catalog's (``centre``) before normalising."""
        names = sorted(self.sums, key=lambda g: (-self.counts[g], g))[:max_genres]
        if not names:
            return [], np.zeros((0, 0), np.float32)
        matrix = np.stack([self.sums[g] / self.counts[g] for g in names])
        if centre:
            matrix = matrix - self.mean()
        return names, _normalise(matrix).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def similarity(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[g, g]`` of unit genre embeddings."""
    return np.clip(embeddings @ embeddings.T, -1.0, 1.0)


def nearest_genres(
    names: Sequence[str], embeddings: np.ndarray, *, k: int = 2
) -> dict[str, list[tuple[str, float]]]:
    """Each genre's ``k`` nearest other genres (the paper's 2-NN), most similar first."""
    sim = similarity(embeddings)
    out: dict[str, list[tuple[str, float]]] = {}
    for i, name in enumerate(names):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i][:k]
        out[name] = [(names[j], float(sim[i, j])) for j in order]
    return out


@dataclass(frozen=True)
class Analogy:
    """``a - b + c ≈ d`` with the cosine similarity of ``a - b + c`` and ``d``."""

    a: str
    b: str
    c: str
    d: str
    score: float

    def __str__(self) -> str:
        return f"{self.a} - {self.b} + {self.c} ≈ {self.d} ({self.score:.3f})"


def analogies(names: Sequence[str], embeddings: np.ndarray) -> list[Analogy]:
    """Every analogy ``A - B + C ≈ D`` over four distinct genres, best first.

    For each ``(A, B, C)`` (``A - B + C`` equals ``C - B + A``, so each pair ``{A, C}``
    is taken once) ``D`` is the genre, other than the three, most similar to
    ``A - B + C``. Callers keep those above a threshold.
    """
    g = len(names)
    found: list[Analogy] = []
    if g < 4:
        return found
    for a, c in combinations(range(g), 2):
        for b in range(g):
            if b in (a, c):
                continue
            target = _normalise(embeddings[a] - embeddings[b] + embeddings[c])
            scores = embeddings @ target
            scores[[a, b, c]] = -np.inf
            d = int(np.argmax(scores))
            found.append(Analogy(names[a], names[b], names[c], names[d], float(scores[d])))
    found.sort(key=lambda x: (-x.score, x.a, x.b, x.c))
    return found


def analogy_null(
    vectors: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    mean: np.ndarray | None,
    *,
    permutations: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Analogy scores when genre means carry no genre: ``labels`` of a track sample
    ``vectors [n, dim]`` are shuffled ``permutations`` times, the genres' (centred by
    ``mean``) embeddings rebuilt from the sample and every analogy scored. Returns all
    those scores; an analogy of the real genres means something only above most of them.
    """
    rng = np.random.default_rng(seed)
    scores: list[float] = []
    present = [g for g in names if np.any(labels == g)]
    if len(present) < 4:
        return np.zeros(0)
    for _ in range(permutations):
        shuffled = rng.permutation(labels)
        matrix = np.stack([vectors[shuffled == g].mean(axis=0) for g in present])
        if mean is not None:
            matrix = matrix - mean
        scores += [a.score for a in analogies(present, _normalise(matrix))]
    return np.asarray(scores)


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of the rows of ``x`` ``[n, dim]``.

    Returns:
        ``(projected [n, c], components [c, dim], mean [dim], explained_ratio [c])``;
        ``c`` is at most ``min(n, dim)`` (missing components are zero).
    """
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    c = min(n_components, vt.shape[0])
    components = np.zeros((n_components, x.shape[1]), dtype=np.float64)
    components[:c] = vt[:c]
    variance = s**2
    ratio = np.zeros(n_components)
    if variance.sum() > 0:
        ratio[:c] = variance[:c] / variance.sum()
    return centred @ components.T, components, mean, ratio


@dataclass
class Confusion:
    """Counts of (true genre, predicted genre) pairs."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, true: Sequence[str | None], predicted: Sequence[str]) -> None:
        for t, p in zip(true, predicted, strict=True):
            if t is not None:
                self.counts[(t, p)] = self.counts.get((t, p), 0) + 1

    def matrix(self) -> tuple[list[str], np.ndarray]:
        """Labels and ``[true, predicted]`` counts (empty when no true labels were seen)."""
        labels = sorted({x for pair in self.counts for x in pair})
        pos = {g: i for i, g in enumerate(labels)}
        m = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for (t, p), n in self.counts.items():
            m[pos[t], pos[p]] += n
        return labels, m

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def accuracy(self) -> float:
        total = self.total
        return sum(n for (t, p), n in self.counts.items() if t == p) / total if total else 0.0


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of one analysis report (``configs/analyze.yaml``)."""

    labels: str = path_field("input")  # a labels folder (``genreflow label --out``)
    out: str = path_field("output")  # report folder: report.html, pictures, analysis.json
    model_version: str | None = None  # null: the newest finished label partition's
    analogy_threshold: float = 0.8  # cosine of A - B + C and D to count as an analogy
    max_analogies: int = 20
    centre: bool = True  # subtract the catalog's mean signature before cosine, PCA, analogies
    null_quantile: float = 0.99  # an analogy must beat this quantile of shuffled-label scores
    null_permutations: int = 5  # shuffles of the sampled tracks' genres for that null
    max_genres: int = 50  # the largest genres, for the pictures and analogies
    sample_tracks: int = 2_000  # tracks drawn for the track-level PCA picture
    heatmap_tracks: int = 2  # tracks per genre in the attention heat-maps
    batch_size: int = 4_096
    seed: int = 0

    def __post_init__(self) -> None:
        from genreflow.errors import ConfigError

        if not -1 <= self.analogy_threshold <= 1:
            raise ConfigError(
                f"analogy_threshold is a cosine in [-1, 1], got {self.analogy_threshold}"
            )
        for name in ("max_genres", "sample_tracks", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_analogies < 0 or self.heatmap_tracks < 0:
            raise ConfigError("max_analogies and heatmap_tracks must be >= 0")
        if not 0 <= self.null_quantile <= 1 or self.null_permutations < 0:
            raise ConfigError(
                "null_quantile must be in [0, 1] and null_permutations >= 0 (0: no null)"
            )
