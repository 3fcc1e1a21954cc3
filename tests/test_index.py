"""The FAISS index core against brute-force numpy search; GPU selection; publishing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from genreflow import index as fidx
from genreflow.errors import ConfigError, GenreflowError, ShapeError
from genreflow.formats import index as findex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, *, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)))


def blocks_of(vectors: np.ndarray, size: int) -> fidx.Blocks:
    ids = np.array([f"t{i}" for i in range(len(vectors))], dtype=object)
    genres = np.array([f"g{i % 3}" for i in range(len(vectors))], dtype=object)

    def blocks() -> Iterator[fidx.Block]:
        for i in range(0, len(vectors), size):
            yield fidx.Block(ids[i : i + size], vectors[i : i + size], genres[i : i + size])

    return blocks


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, own: np.ndarray) -> np.ndarray:
    scores = queries @ vectors.T
    scores[np.arange(len(queries)), own] = -np.inf  # the query track itself
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def loaded(built: fidx.BuiltIndex, folder: Path) -> findex.LoadedIndex:
    info = fidx.manifest(built, version=folder.name, extra={"model_version": "m1"})
    findex.write_version(built.index, built.track_ids, built.genres, str(folder), info)
    return findex.load_version(str(folder))


def test_exact_index_equals_brute_force_search(tmp_path: Path) -> None:
    x = unit(np.random.default_rng(0).normal(size=(600, 16)))
    config = fidx.IndexConfig(tune_queries=50)
    built = fidx.build_index(blocks_of(x, 64), config=config)
    assert built.plan.kind == "flat" and built.count == 600 and built.recall_at_10 == 1.0
    assert built.track_ids[:2].to_pylist() == ["t0", "t1"]
    assert built.genres[:2].to_pylist() == ["g0", "g1"]
    index = loaded(built, tmp_path / "v-1")
    own = np.arange(600)
    scores, found = index.search(x, 5, exclude=own)  # label embeddings in, centred inside
    xc = unit(x - x.mean(axis=0))  # the default: the catalog's mean signature removed
    expected = brute_force(xc, xc, 5, own)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(xc @ xc.T, expected, 1), atol=1e-5)
    np.testing.assert_allclose(index.centre, x.mean(axis=0), atol=1e-6)
    rows = index.recommend("t7", 4)
    assert [r["track_id"] for r in rows] == [f"t{j}" for j in expected[7, :4]]
    assert all(r["track_id"] != "t7" for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    # centre=false: cosine on the signatures as they are
    raw = loaded(
        fidx.build_index(blocks_of(x, 64), config=fidx.IndexConfig(tune_queries=50, centre=False)),
        tmp_path / "v-2",
    )
    assert raw.centre is None
    np.testing.assert_array_equal(raw.search(x, 5, exclude=own)[1], brute_force(x, x, 5, own))


def test_ivf_reaches_the_recall_target_on_clustered_data(tmp_path: Path) -> None:
    x = clustered(20_000, 32, clusters=64, seed=1)
    config = fidx.IndexConfig(
        index_type="ivf", train_size=8_000, tune_queries=300, recall_target=0.95
    )
    built = fidx.build_index(blocks_of(x, 4_096), config=config)
    assert built.plan.kind == "ivf" and built.plan.nlist > 1
    assert built.recall_at_10 >= 0.95
    nprobe = built.params["nprobe"]
    assert 1 <= nprobe <= built.plan.nlist
    # the tuning table is cheapest first and stops at the first value reaching the target
    assert [t["value"] for t in built.tuning][-1] == nprobe
    assert all(t["recall_at_10"] < 0.95 for t in built.tuning[:-1])
    # recall measured independently, on queries that were not in the tuning sample
    index = loaded(built, tmp_path / "v-1")
    assert index.info["recall_at_10"] >= 0.95 and index.info["params"] == {"nprobe": nprobe}
    rng = np.random.default_rng(9)
    picks = rng.choice(len(x), 300, replace=False)
    queries = x[picks]
    _, found = index.search(queries, 10, exclude=picks)
    xc = unit(x - x.mean(axis=0))
    truth = brute_force(xc, xc[picks], 10, picks)
    assert fidx.recall_at_k(found, truth) >= 0.93


def test_hnsw_and_compressed_indexes_build_and_report_their_recall(tmp_path: Path) -> None:
    x = clustered(4_000, 16, clusters=16, seed=2)
    picks = np.random.default_rng(5).choice(len(x), 300, replace=False)
    xc = unit(x - x.mean(axis=0))  # what the index holds (centred by default)
    truth = brute_force(xc, xc[picks], 10, picks)
    for kind in ("hnsw", "ivfsq", "ivfpq"):
        config = fidx.IndexConfig(index_type=kind, train_size=3_000, tune_queries=100)  # type: ignore[arg-type]
        built = fidx.build_index(blocks_of(x, 1_000), config=config)
        assert built.plan.kind == kind and built.count == 4_000 and built.tuning
        assert set(built.params) == {"efSearch" if kind == "hnsw" else "nprobe"}
        # the reported recall is what the published index gives on other queries (300
        # here, 100 in its tuning sample: sampling error of a few hundredths either way)
        _, found = loaded(built, tmp_path / f"v-{kind}").search(x[picks], 10, exclude=picks)
        measured = fidx.recall_at_k(found, truth)
        assert abs(built.recall_at_10 - measured) <= 0.06, (kind, built.recall_at_10, measured)
        if kind != "ivfpq":  # 8-bit codes and graphs reach the target; PQ codes may not
            assert built.recall_at_10 >= config.recall_target


def test_the_plan_follows_catalog_size_and_memory() -> None:
    config = fidx.IndexConfig(exact_below=1_000, memory_budget_gb=1.0, train_size=100_000)
    assert fidx.plan_index(999, 256, config).kind == "flat"
    ivf = fidx.plan_index(100_000, 256, config)
    assert ivf.kind == "ivf" and ivf.factory == f"IVF{ivf.nlist},Flat"
    assert ivf.nlist == int(4 * np.sqrt(100_000))
    # 2M x 256 float32 = 1.9 GiB: over the budget, a quarter of it with 8-bit codes
    assert fidx.plan_index(2_000_000, 256, config).kind == "ivfsq"
    pq = fidx.plan_index(20_000_000, 256, config)
    assert pq.kind == "ivfpq" and 256 % pq.pq_m == 0 and pq.pq_m == 128
    # never more lists than 39 training vectors each allow
    assert fidx.plan_index(5_000_000, 64, fidx.IndexConfig(train_size=39_000)).nlist == 1_000
    assert fidx.plan_index(50, 8, fidx.IndexConfig(index_type="ivf")).nlist == 1
    assert fidx.plan_index(100, 30, fidx.IndexConfig(index_type="ivfpq", pq_m=8)).pq_m == 6


def test_gpu_selection() -> None:
    assert fidx.select_gpus("cpu", 4) == 0
    assert fidx.select_gpus("auto", 0) == 0
    assert fidx.select_gpus("auto", 2) == 2
    assert fidx.select_gpus("gpu", 1) == 1
    with pytest.raises(ConfigError, match="no GPU"):
        fidx.select_gpus("gpu", 0)
    with pytest.raises(ConfigError, match="auto, gpu or cpu"):
        fidx.select_gpus("maybe", 1)
    assert fidx.faiss_gpus() == faiss.get_num_gpus()
    with pytest.raises(ConfigError, match="device"):
        from genreflow.config import load_config

        load_config(fidx.IndexConfig, overrides=["resources.device=sometimes"])


def test_cpu_builds_never_touch_the_gpu_api(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpu(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a GPU call on a CPU build")

    monkeypatch.setattr(fidx, "_gpu_placement", no_gpu)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", no_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", no_gpu, raising=False)
    x = clustered(2_000, 8, clusters=8, seed=3)
    built = fidx.build_index(
        blocks_of(x, 500), config=fidx.IndexConfig(index_type="ivf", tune_queries=50), gpus=0
    )
    assert built.gpus == 0 and built.count == 2_000


def _recording_placement(
    calls: list[str],
) -> Any:
    """A stand-in for the GPU placement where FAISS has no GPU: copies on the CPU, each
    move recorded."""

    def placement(gpus: int, plan: fidx.IndexPlan) -> tuple[Any, Any]:
        calls.append(f"placement:{gpus}:{plan.kind}")

        def to_device(index: faiss.Index, device: int) -> faiss.Index:
            calls.append(f"to:{device}")
            return faiss.clone_index(index)

        def to_cpu(index: faiss.Index) -> faiss.Index:
            calls.append("back")
            return faiss.clone_index(index)

        return to_device, to_cpu

    return placement


def test_the_gpu_branch_trains_once_fills_every_gpu_and_returns_a_cpu_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With GPUs (stood in for by recording CPU copies where there are none), the index
    is trained on GPU 0, each GPU fills its range, and a CPU index comes back: the one
    a CPU build makes."""
    calls: list[str] = []
    have_gpu = fidx.faiss_gpus() > 0
    if not have_gpu:
        monkeypatch.setattr(fidx, "_gpu_placement", _recording_placement(calls))
    x = clustered(3_000, 16, clusters=8, seed=4)
    config = fidx.IndexConfig(index_type="ivf", tune_queries=100)
    gpus = 2 if not have_gpu else fidx.select_gpus("auto", fidx.faiss_gpus())
    on_gpu = fidx.build_index(blocks_of(x, 1_000), config=config, gpus=gpus)
    on_cpu = fidx.build_index(blocks_of(x, 1_000), config=config, gpus=0)
    if not have_gpu:  # train on 0 and back; a copy of the trained index to each; back
        assert calls == ["placement:2:ivf", "to:0", "back", "to:0", "to:1", "back", "back"]
    assert on_gpu.gpus == gpus and on_gpu.count == on_cpu.count == 3_000
    assert not isinstance(on_gpu.index, getattr(faiss, "GpuIndex", ()))
    assert on_gpu.recall_at_10 >= 0.9
    if not have_gpu:  # the same quantizer and rows in the same order: the same index
        assert (
            faiss.serialize_index(on_gpu.index).tobytes()
            == faiss.serialize_index(on_cpu.index).tobytes()
        )
    # HNSW has no GPU build: it is built on the CPU even when GPUs are asked for
    calls.clear()
    hnsw = fidx.build_index(
        blocks_of(x, 1_000), config=fidx.IndexConfig(index_type="hnsw", tune_queries=50), gpus=1
    )
    assert hnsw.gpus == 0 and calls == []


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfsq", "ivfpq"])
def test_a_sharded_fill_equals_a_single_device_build_byte_for_byte(kind: str) -> None:
    """The multi-GPU fill, run with CPU shards: blocks (of 700) straddle the shards'
    ranges, the shards share the trained quantizer, and the merged index is the one a
    single device builds."""
    x = clustered(2_500, 16, clusters=8, seed=5)
    config = fidx.IndexConfig(index_type=kind, tune_queries=50, nlist=16, pq_m=4)  # type: ignore[arg-type]
    single = fidx.build_index(blocks_of(x, 700), config=config)
    sharded = fidx.build_index(blocks_of(x, 700), config=config, shards=3)
    assert sharded.count == single.count == 2_500
    assert sharded.track_ids == single.track_ids
    assert (
        faiss.serialize_index(sharded.index).tobytes()
        == faiss.serialize_index(single.index).tobytes()
    )
    assert sharded.recall_at_10 == single.recall_at_10


def test_rows_that_change_between_the_passes_are_refused() -> None:
    x = clustered(1_000, 8, clusters=4, seed=6)
    passes = iter([x, np.concatenate([x, x[:10]])])

    def blocks() -> Iterator[fidx.Block]:
        rows = next(passes)
        yield fidx.Block(np.array([f"t{i}" for i in range(len(rows))], dtype=object), rows, None)

    with pytest.raises(GenreflowError, match="labels grew while the index was built"):
        fidx.build_index(blocks, config=fidx.IndexConfig(tune_queries=20), shards=2)


def test_reservoir_sample_is_bounded_and_uniform() -> None:
    means = []
    for seed in range(40):
        sample = fidx.Reservoir(50, seed=seed)
        for start in range(0, 1_000, 64):
            rows = np.arange(start, min(start + 64, 1_000), dtype=np.float32)[:, None]
            sample.add(rows, np.array([f"r{int(r)}" for r in rows[:, 0]], dtype=object))
        assert sample.seen == 1_000 and sample.vectors is not None
        assert len(sample.positions) == 50 == len(set(sample.positions.tolist()))
        np.testing.assert_array_equal(sample.vectors[:, 0], sample.positions)
        assert list(sample.labels) == [f"r{p}" for p in sample.positions]
        means.append(sample.positions.mean())
    assert abs(np.mean(means) - 499.5) < 30  # uniform: mean position near the middle


def test_bad_input_errors() -> None:
    with pytest.raises(GenreflowError, match="no embeddings"):
        fidx.build_index(lambda: iter([]), config=fidx.IndexConfig())
    mixed = [
        fidx.Block(np.array(["a"], dtype=object), np.ones((1, 4), np.float32)),
        fidx.Block(np.array(["b"], dtype=object), np.ones((1, 5), np.float32)),
    ]
    with pytest.raises(ShapeError, match="model_version"):
        fidx.build_index(lambda: iter(mixed), config=fidx.IndexConfig())
    with pytest.raises(ConfigError, match="recall_target"):
        fidx.IndexConfig(recall_target=1.5)


def test_search_errors_name_what_is_wrong(tmp_path: Path) -> None:
    x = unit(np.random.default_rng(5).normal(size=(40, 8)))
    index = loaded(fidx.build_index(blocks_of(x, 16), config=fidx.IndexConfig()), tmp_path / "v")
    with pytest.raises(GenreflowError, match="'nope' is not in the index"):
        index.recommend("nope", 3)
    with pytest.raises(ShapeError, match=r"\(1, 5\).*dimension 8"):
        index.search(np.ones((1, 5), np.float32), 3)
    empty = findex.LoadedIndex(
        index=faiss.IndexFlatIP(8),
        track_ids=np.zeros(0, dtype=object),
        genres=np.zeros(0, dtype=object),
        info={},
        folder="empty",
    )
    with pytest.raises(GenreflowError, match="empty"):
        empty.search(np.ones((1, 8), np.float32), 3)
    with pytest.raises(GenreflowError, match="no index in"):
        findex.open_index(str(tmp_path / "missing"))
    # asking for more neighbours than there are tracks pads with -1
    scores, found = index.search(x[:1], 60)
    assert np.isneginf(scores[0, 40:]).all()
    assert found.shape == (1, 60) and (found[0, 40:] == -1).all()


def test_publishing_is_atomic_and_keeps_recent_versions(tmp_path: Path) -> None:
    out = tmp_path / "index"
    x = unit(np.random.default_rng(6).normal(size=(50, 8)))
    names = []
    for i in range(3):
        built = fidx.build_index(blocks_of(x[: 20 + 10 * i], 16), config=fidx.IndexConfig())
        name = f"v-2026010{i}T000000-abc"
        info = fidx.manifest(built, version=name, extra={"model_version": "m"})
        findex.write_version(built.index, built.track_ids, built.genres, str(out / name), info)
        findex.publish(str(out), name, info, keep=2)
        names.append(name)
        assert findex.open_index(str(out)).count == 20 + 10 * i
    assert findex.list_versions(str(out)) == names[1:]
    # a build interrupted after writing its files but before publishing: readers still
    # get the published index; the next publish removes the orphan
    built = fidx.build_index(blocks_of(x, 16), config=fidx.IndexConfig())
    orphan = "v-20260109T000000-dead"
    findex.write_version(
        built.index,
        built.track_ids,
        built.genres,
        str(out / orphan),
        fidx.manifest(built, version=orphan, extra={}),
    )
    assert findex.open_index(str(out)).info["version"] == names[-1]
    name = "v-20260110T000000-abc"
    info = fidx.manifest(built, version=name, extra={})
    findex.write_version(built.index, built.track_ids, built.genres, str(out / name), info)
    findex.publish(str(out), name, info, keep=2)
    assert findex.list_versions(str(out)) == [names[-1], name]
    assert findex.open_index(str(out)).count == 50


def test_embedding_blocks_give_each_track_of_the_model_once(tmp_path: Path) -> None:
    """The index reads one row per track of its model version: the first met wins, also
    when a track repeats inside one batch or across files, and other models' rows and
    their widths are skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genreflow.pipelines.index import embedding_blocks

    def write(name: str, rows: list[tuple[str, str, list[float]]]) -> str:
        table = pa.table(
            {
                "track_id": [r[0] for r in rows],
                "genre": ["rock" if r[0] != "t3" else None for r in rows],
                "embedding": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
                "model_version": [r[1] for r in rows],
            }
        )
        pq.write_table(table, tmp_path / name)
        return str(tmp_path / name)

    first = write(
        "a.parquet",
        [("t1", "m1", [1, 0]), ("t2", "m2", [0, 0, 1]), ("t1", "m1", [0, 1]), ("t3", "m1", [2, 2])],
    )
    second = write("b.parquet", [("t3", "m1", [5, 5]), ("t4", "m1", [3, 3])])
    blocks = list(embedding_blocks([first, second], version="m1", batch_size=100))
    ids = [t for b in blocks for t in b.track_ids]
    vectors = np.concatenate([b.vectors for b in blocks])
    genres = [g for b in blocks for g in b.genres if b.genres is not None]
    assert ids == ["t1", "t3", "t4"]
    assert vectors.tolist() == [[1, 0], [2, 2], [3, 3]] and vectors.dtype == np.float32
    assert genres == ["rock", None, "rock"]
    assert list(embedding_blocks([first], version="m3", batch_size=100)) == []
