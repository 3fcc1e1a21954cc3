"""Genre analysis against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from genreflow import analysis
from genreflow.errors import ConfigError


def test_genre_embeddings_are_normalised_means_streamed_in_batches() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 5))
    genres = [["a", "b", "c", None][i % 4] for i in range(30)]
    acc = analysis.GenreAccumulator()
    for i in range(0, 30, 7):  # batch boundaries must not matter
        acc.add(genres[i : i + 7], vectors[i : i + 7])
    names, emb = acc.embeddings(centre=False)
    assert sorted(names) == ["a", "b", "c"] and acc.counts == {"a": 8, "b": 8, "c": 7}
    for name, row in zip(names, emb, strict=True):
        mean = vectors[[g == name for g in genres]].mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
    # centred (the default): the catalog's mean over every track, genre or not, removed
    _, centred = acc.embeddings()
    for name, row in zip(names, centred, strict=True):
        diff = vectors[[g == name for g in genres]].mean(axis=0) - vectors.mean(axis=0)
        np.testing.assert_allclose(row, diff / np.linalg.norm(diff), atol=1e-6)
    assert names[:2] == ["a", "b"]  # largest first, then by name
    assert acc.embeddings(max_genres=1)[0] == ["a"]


def test_nearest_genres_and_analogies() -> None:
    # d = a - b + c exactly; e is unrelated
    base = np.eye(6)
    a, b, c, e = base[0] + base[1], base[1] + base[2], base[2] + base[3], base[5]
    d = a - b + c
    names = ["a", "b", "c", "d", "e"]
    emb = np.stack([v / np.linalg.norm(v) for v in (a, b, c, d, e)])
    near = analysis.nearest_genres(names, emb, k=2)
    assert near["a"][0][0] in {"b", "d"}
    assert all(n != "a" for n, _ in near["a"]) and len(near["e"]) == 2
    sim = analysis.similarity(emb)
    assert near["c"][0][1] == pytest.approx(np.sort(sim[2])[-2])
    found = analysis.analogies(names, emb)
    best = found[0]
    assert {best.a, best.c} == {"a", "c"} and best.b == "b" and best.d == "d"
    assert best.score == pytest.approx(1.0)
    assert all(len({x.a, x.b, x.c, x.d}) == 4 for x in found)
    # each {A, C} pair once per B: 5 genres -> C(5,2) * 3 analogies
    assert len(found) == 10 * 3
    assert analysis.analogies(names[:3], emb[:3]) == []


def test_a_shared_component_is_measured_and_centring_separates_genres() -> None:
    """Signatures = a large shared direction + a small genre direction: uncentred, every
    genre pair looks alike (cosine > 0.9); centred, the genres are apart, the shared
    fraction says how much the common part held, and shuffled labels give the null."""
    rng = np.random.default_rng(2)
    dim, genres = 16, ["g0", "g1", "g2", "g3", "g4"]
    shared = np.zeros(dim)
    shared[0] = 1.0
    labels = np.array([genres[i % 5] for i in range(500)], dtype=object)
    vectors = np.stack(
        [
            shared + 0.3 * np.eye(dim)[1 + genres.index(g)] + 0.05 * rng.normal(size=dim)
            for g in labels
        ]
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    acc = analysis.GenreAccumulator()
    acc.add(list(labels), vectors)
    names, raw = acc.embeddings(centre=False)
    assert analysis.similarity(raw)[np.triu_indices(5, 1)].min() > 0.9
    _, centred = acc.embeddings()
    assert analysis.similarity(centred)[np.triu_indices(5, 1)].max() < 0.0
    mean = vectors.mean(axis=0)
    assert acc.shared_fraction() == pytest.approx(float(mean @ mean), rel=1e-9)
    assert 0.85 < acc.shared_fraction() < 1
    null = analysis.analogy_null(vectors, labels, names, mean, permutations=3, seed=0)
    assert null.size == 3 * len(analysis.analogies(names, centred))
    # an analogy over the real genres is no better than chance here: the directions are
    # orthogonal, so no A - B + C points at a D
    assert max(a.score for a in analysis.analogies(names, centred)) < 0.9


def test_pca_matches_the_covariance_eigenvectors() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)) * np.array([5.0, 2.0, 1.0, 0.1])
    projected, components, mean, ratio = analysis.pca(x, 2)
    eigvals, eigvecs = np.linalg.eigh(np.cov(x.T))
    top = eigvecs[:, ::-1][:, :2]
    for i in range(2):
        assert abs(components[i] @ top[:, i]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(projected, (x - mean) @ components.T)
    assert ratio[0] > ratio[1] > 0 and ratio.sum() <= 1
    assert ratio[0] == pytest.approx(eigvals[-1] / eigvals.sum(), rel=1e-6)
    # fewer points than components: the missing ones are zero
    few, _, _, few_ratio = analysis.pca(x[:2], 3)
    assert few.shape == (2, 3) and few_ratio[2] == 0


def test_confusion_counts() -> None:
    conf = analysis.Confusion()
    conf.add(["rock", "rock", None, "jazz"], ["rock", "jazz", "rock", "jazz"])
    labels, matrix = conf.matrix()
    assert labels == ["jazz", "rock"]
    assert matrix.tolist() == [[1, 0], [1, 1]]
    assert conf.total == 3 and conf.accuracy() == pytest.approx(2 / 3)


def test_config_bounds() -> None:
    with pytest.raises(ConfigError, match="analogy_threshold"):
        analysis.AnalyzeConfig(analogy_threshold=2.0)
    with pytest.raises(ConfigError, match="sample_tracks"):
        analysis.AnalyzeConfig(sample_tracks=0)
