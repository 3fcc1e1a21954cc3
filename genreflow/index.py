"""The similarity index over attention signatures: plan, build, tune, publish, search.

Pure FAISS over iterators of ``(track_ids, vectors)`` blocks; no Ray here. Vectors are
L2-normalised signatures, so cosine similarity is the inner product; by default the
catalog's mean signature is subtracted first (``centre``), so the component every track
shares does not swamp what tells them apart.

Build (:func:`build_index`), in two streaming passes over the blocks:
1. count the vectors and draw a uniform sample (training vectors plus held-out queries);
2. train on the sample, add every block, and meanwhile search the held-out queries
   exactly against each block (the ground truth, kept in a result heap).
Then :func:`tune` picks the search parameter (``nprobe`` or ``efSearch``) that reaches
the recall target fastest. Memory holds the sample, the index and the id map, never
the raw catalog twice.

Published layout (:func:`publish`): ``<out>/<version>/{index.faiss, ids.parquet,
index.json, neighbours/}`` and ``<out>/index.json`` written last, pointing at the
current version, so a reader sees the old index or the new one, never half of one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np
import pyarrow as pa

from genreflow.config import path_field
from genreflow.errors import ConfigError, GenreflowError, ShapeError
from genreflow.formats.index import (
    FORMAT,
    IDS_FILE,
    INDEX_FILE,
    NEIGHBOURS_DIR,
    centre_vectors,
    set_search_param,
)
from genreflow.resources import IndexResources

log = logging.getLogger(__name__)

RECALL_K = 10


class Block(NamedTuple):
    """Rows of the catalog to index."""

    track_ids: np.ndarray  # [n] object
    vectors: np.ndarray  # [n, dim] float32, L2-normalised
    genres: np.ndarray | None = None  # [n] object, kept in the id map for display


Blocks = Callable[[], Iterator[Block]]  # a fresh pass over the catalog per call

IndexKind = Literal["flat", "ivf", "ivfsq", "ivfpq", "hnsw"]


@dataclass(frozen=True)
class IndexConfig:
    """Settings of one index build (``configs/index.yaml``)."""

    labels: str = path_field("input")  # a labels folder (``genreflow label --out``)
    out: str = path_field("output")  # index folder; each build publishes a new version inside it
    model_version: str | None = None  # null: the newest finished label partition's
    index_type: Literal["auto", "flat", "ivf", "ivfsq", "ivfpq", "hnsw"] = "auto"
    exact_below: int = 50_000  # auto: exact search below this many vectors
    memory_budget_gb: float = 16.0  # auto: compress (SQ8, then PQ) when vectors exceed it
    nlist: int = 0  # IVF lists; 0: about 4 * sqrt(count)
    pq_m: int = 0  # IVF-PQ sub-quantisers (bytes per vector); 0: dim / 2
    hnsw_m: int = 32
    train_size: int = 100_000  # sampled vectors to train on (at least 39 per list)
    tune_queries: int = 1_000  # held-out queries for measuring recall@10
    recall_target: float = 0.95
    neighbours: int = 10  # neighbours per track in the table; 0: no table
    keep_versions: int = 2  # published versions kept (readers of the last one finish)
    centre: bool = True  # index signatures minus the catalog's mean (queries are centred too)
    seed: int = 0
    resources: IndexResources = field(default_factory=IndexResources)

    def __post_init__(self) -> None:
        for name in ("exact_below", "train_size", "tune_queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_versions < 1 or self.neighbours < 0 or self.nlist < 0 or self.pq_m < 0:
            raise ConfigError("keep_versions must be >= 1; neighbours, nlist, pq_m >= 0")
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall_target must lie in (0, 1], got {self.recall_target}")


def select_gpus(requested: str, available: int) -> int:
    """How many GPUs to build on: ``cpu`` none, ``auto`` all there are, ``gpu`` all (>= 1).

    ``available`` must come from ``faiss.get_num_gpus()``: the GPU package imports and
    builds CPU indexes without a GPU, and only fails at the first GPU call.

    Raises:
        ConfigError: ``gpu`` with no GPU, or an unknown setting.
    """
    if requested == "cpu":
        return 0
    if requested == "auto":
        return available
    if requested == "gpu":
        if available < 1:
            raise ConfigError(
                "resources.device=gpu but FAISS sees no GPU (faiss.get_num_gpus() == 0; is "
                "faiss-gpu installed and a CUDA device visible?). Use resources.device=auto to "
                "fall back to the CPU."
            )
        return available
    raise ConfigError(f"device must be auto, gpu or cpu, got {requested!r}")


def faiss_gpus() -> int:
    """GPUs FAISS can use here (0 with the CPU package)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


@dataclass(frozen=True)
class IndexPlan:
    kind: IndexKind
    factory: str  # the faiss.index_factory string
    nlist: int = 0
    pq_m: int = 0
    hnsw_m: int = 0

    @property
    def trained(self) -> bool:
        return self.kind in ("ivf", "ivfsq", "ivfpq")


def plan_index(count: int, dim: int, config: IndexConfig) -> IndexPlan:
    """The index for ``count`` vectors of ``dim`` (unless the config names a type).

    - below ``exact_below`` vectors: exact search (``Flat``);
    - raw float32 vectors within ``memory_budget_gb``: ``IVF,Flat``;
    - within 4x the budget: ``IVF,SQ8`` (8-bit scalar codes, recall@10 stays near 0.98);
    - beyond: ``IVF,PQ`` (``pq_m`` bytes per vector; its recall has a ceiling set by the
      code size, which tuning measures and reports).
    """
    kind = config.index_type
    if kind == "auto":
        raw_gb = count * dim * 4 / 2**30
        if count < config.exact_below:
            kind = "flat"
        elif raw_gb <= config.memory_budget_gb:
            kind = "ivf"
        elif raw_gb / 4 <= config.memory_budget_gb:
            kind = "ivfsq"
        else:
            kind = "ivfpq"
    if kind == "flat":
        return IndexPlan("flat", "Flat")
    if kind == "hnsw":
        return IndexPlan("hnsw", f"HNSW{config.hnsw_m},Flat", hnsw_m=config.hnsw_m)
    # about 4 sqrt(n) lists, with >= 39 training vectors per list (FAISS' k-means minimum)
    nlist = config.nlist or int(min(4 * math.sqrt(max(count, 1)), config.train_size / 39))
    nlist = max(1, min(nlist, 65_536, count // 39 if count >= 39 else 1))
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{nlist},Flat", nlist=nlist)
    if kind == "ivfsq":
        return IndexPlan("ivfsq", f"IVF{nlist},SQ8", nlist=nlist)
    pq_m = config.pq_m or max(1, dim // 2)
    while dim % pq_m:  # sub-quantisers must divide the dimension
        pq_m -= 1
    return IndexPlan("ivfpq", f"IVF{nlist},PQ{pq_m}x8", nlist=nlist, pq_m=pq_m)


class Reservoir:
    """A uniform random sample of ``size`` rows from a stream of blocks, in O(size) memory
    (each row gets a random key; the ``size`` smallest keys win)."""

    def __init__(self, size: int, *, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0)
        self.positions = np.zeros(0, dtype=np.int64)
        self.vectors: np.ndarray | None = None
        self.labels = np.zeros(0, dtype=object)  # optional payload per row
        self.seen = 0

    def add(self, vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
        n = len(vectors)
        keys = np.concatenate([self.keys, self.rng.random(n)])
        positions = np.concatenate([self.positions, np.arange(self.seen, self.seen + n)])
        rows = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        payload = np.concatenate(
            [self.labels, labels if labels is not None else np.full(n, None, dtype=object)]
        )
        self.seen += n
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            keys, positions, rows, payload = keys[keep], positions[keep], rows[keep], payload[keep]
        self.keys, self.positions, self.vectors = keys, positions, np.ascontiguousarray(rows)
        self.labels = payload


@dataclass
class BuiltIndex:
    index: faiss.Index  # a CPU index, whatever it was built on
    track_ids: pa.Array  # [count] strings: position -> track id
    genres: pa.Array  # [count] strings, null where unknown
    plan: IndexPlan
    dim: int
    params: dict[str, Any] = field(default_factory=dict)  # the tuned search parameter
    recall_at_10: float = 1.0
    tuning: list[dict[str, float]] = field(default_factory=list)
    exact_qps: float = 0.0
    build_seconds: float = 0.0
    gpus: int = 0
    centre: np.ndarray | None = None  # the mean signature subtracted before normalising

    @property
    def count(self) -> int:
        return int(self.index.ntotal)


class ShardedFill:
    """An index filled as ``len(devices)`` copies of one trained index, each holding a
    contiguous range of the ``count`` rows, then merged in order into one CPU index.

    The copies share the trained coarse quantizer (IVF) and every row keeps its
    position, so the merged index is the one a single device would have built, byte
    for byte (``tests/test_index.py`` checks this with CPU shards). Each block is added
    in one call per shard it spans, never row by row. FAISS's own multi-GPU sharding
    (``index_cpu_to_all_gpus(shard=True)``) accepts one ``add`` only and trains one
    coarse quantizer per GPU; this fill has neither limit.
    """

    def __init__(
        self,
        trained: faiss.Index,
        *,
        count: int,
        shards: int,
        to_device: Callable[[faiss.Index, int], faiss.Index],
        to_cpu: Callable[[faiss.Index], faiss.Index],
    ) -> None:
        self.count, self.to_cpu = count, to_cpu
        self.bounds = [count * i // shards for i in range(shards)] + [count]
        self.parts = [to_device(faiss.clone_index(trained), i) for i in range(shards)]
        self.added = 0

    def add(self, vectors: np.ndarray) -> None:
        start, end = self.added, self.added + len(vectors)
        if end > self.count:
            raise GenreflowError(
                f"the labels grew while the index was built ({end} rows, {self.count} counted "
                "in the first pass); rerun once the label job has finished"
            )
        for part, low, high in zip(self.parts, self.bounds, self.bounds[1:], strict=False):
            lo, hi = max(start, low), min(end, high)
            if lo < hi:
                part.add(vectors[lo - start : hi - start])
        self.added = end

    def merged(self) -> faiss.Index:
        """The filled index on the CPU, rows in the order they were added."""
        if self.added != self.count:
            raise GenreflowError(
                f"the labels changed while the index was built ({self.added} rows, "
                f"{self.count} counted in the first pass); rerun once the label job has finished"
            )
        parts = [self.to_cpu(part) for part in self.parts]
        merged = parts[0]
        flat = isinstance(faiss.downcast_index(merged), faiss.IndexFlatCodes)
        for other in parts[1:]:
            merged.merge_from(other, 0 if flat else merged.ntotal)  # flat: ids are positions
        return merged


def _on_cpu(index: faiss.Index, _: int) -> faiss.Index:
    return index


def _gpu_placement(
    gpus: int, plan: IndexPlan
) -> tuple[Callable[..., faiss.Index], Callable[..., faiss.Index]]:
    """``(to_device, to_cpu)`` for a fill on GPUs ``0..gpus-1``."""
    resources = [faiss.StandardGpuResources() for _ in range(gpus)]
    options = faiss.GpuClonerOptions()
    options.useFloat16 = plan.kind == "ivfpq"  # lookup tables in fp16 fit more sub-quantisers

    def to_device(index: faiss.Index, device: int) -> faiss.Index:
        return faiss.index_cpu_to_gpu(resources[device], device, index, options)

    return to_device, faiss.index_gpu_to_cpu


@dataclass
class _FirstPass:
    count: int
    dim: int
    centre: np.ndarray | None
    sample: Reservoir  # centred


def _first_pass(blocks: Blocks, config: IndexConfig) -> _FirstPass:
    """Pass 1: count, dimension, the mean, and a uniform sample to train and tune on."""
    sample = Reservoir(config.train_size + config.tune_queries, seed=config.seed)
    dim = 0
    total: np.ndarray | None = None
    for block in blocks():
        dim = _check_dim(block.vectors, dim)
        sample.add(block.vectors)
        block_sum = np.asarray(block.vectors, dtype=np.float64).sum(axis=0)
        total = block_sum if total is None else total + block_sum
    count = sample.seen
    if count == 0 or sample.vectors is None or total is None:
        raise GenreflowError("no embeddings to index: the labels hold no rows for it")
    centre = (total / count).astype(np.float32) if config.centre else None
    sample.vectors = centre_vectors(sample.vectors, centre)
    return _FirstPass(count, dim, centre, sample)


def _held_out(sample: Reservoir, n_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tuning queries (the sample rows with the largest keys, never trained on), their
    catalog positions, and the rows left to train on."""
    assert sample.vectors is not None
    order = np.argsort(sample.keys, kind="stable")
    n_queries = min(n_queries, max(1, len(order) // 10) if len(order) > 1 else 1)
    query_rows = order[-n_queries:]
    train_rows = order[:-n_queries] if len(order) > n_queries else order
    return (
        np.ascontiguousarray(sample.vectors[query_rows]),
        sample.positions[query_rows],
        train_rows,
    )


def _fill_pass(
    blocks: Blocks,
    fill: ShardedFill,
    queries: np.ndarray,
    centre: np.ndarray | None,
    dim: int,
    count: int,
) -> tuple[pa.Array, pa.Array, Any, float]:
    """Pass 2: add every block to the index, and search the held-out queries exactly
    against each block (the recall truth): ids, genres, the exact results, their time."""
    heap = faiss.ResultHeap(len(queries), min(RECALL_K + 1, count), keep_max=True)
    exact_seconds = 0.0
    ids: list[pa.Array] = []  # Arrow strings: a few bytes a track, not a Python object
    genres: list[pa.Array] = []
    offset = 0
    for block in blocks():
        _check_dim(block.vectors, dim)
        vectors = centre_vectors(block.vectors, centre)
        fill.add(vectors)
        ids.append(pa.array([str(t) for t in block.track_ids], pa.string()))
        block_genres = block.genres if block.genres is not None else [None] * len(vectors)
        genres.append(
            pa.array([g if isinstance(g, str) else None for g in block_genres], pa.string())
        )
        t0 = time.perf_counter()
        _exact_top(heap, queries, vectors, offset)
        exact_seconds += time.perf_counter() - t0
        offset += len(vectors)
    heap.finalize()
    return _concat(ids), _concat(genres), heap, exact_seconds


def _concat(chunks: list[pa.Array]) -> pa.Array:
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


EXACT_TILE = 1 << 20  # query x row scores per step of the exact search (16 MiB of work)


def _exact_top(heap: Any, queries: np.ndarray, vectors: np.ndarray, offset: int) -> None:
    """Add each query's best inner products over ``vectors`` (rows ``offset`` on) to
    ``heap``, a tile of rows at a time so that the work arrays stay ``EXACT_TILE``
    scores whatever the block size."""
    step = max(1, EXACT_TILE // max(1, len(queries)))
    for start in range(0, len(vectors), step):
        tile = vectors[start : start + step]
        scores = queries @ tile.T  # [queries, tile]
        kb = min(heap.k, len(tile))
        top = np.argpartition(-scores, kb - 1, axis=1)[:, :kb]
        heap.add_result(
            np.take_along_axis(scores, top, axis=1).astype(np.float32),
            (top + offset + start).astype(np.int64),
        )


def build_index(
    blocks: Blocks, *, config: IndexConfig, gpus: int = 0, shards: int | None = None
) -> BuiltIndex:
    """Build, fill and tune an index over every block of ``blocks()`` (two passes).

    Args:
        blocks: called once per pass; yields :class:`Block` s in the same order each time.
        gpus: GPUs to build on (:func:`select_gpus`); the result is a CPU index either way.
            With several, each holds a range of the rows (:class:`ShardedFill`).
        shards: ranges to fill separately; None: one per GPU, one on a CPU. On a CPU
            several run the multi-GPU fill with CPU copies (for tests).

    Raises:
        GenreflowError: no vectors; ShapeError: blocks of differing dimension.
    """
    start = time.perf_counter()
    first = _first_pass(blocks, config)
    count, dim, centre, sample = first.count, first.dim, first.centre, first.sample
    plan = plan_index(count, dim, config)
    log.info("indexing %d vectors of dimension %d as %s", count, dim, plan.factory)
    queries, query_pos, train_rows = _held_out(sample, config.tune_queries)

    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if gpus and plan.kind == "hnsw":
        log.info("HNSW has no FAISS GPU build; building it on the CPU")
        gpus = 0
    to_device, to_cpu = _gpu_placement(gpus, plan) if gpus else (_on_cpu, lambda i: i)
    if plan.trained:
        assert sample.vectors is not None  # checked by the first pass
        train = np.ascontiguousarray(sample.vectors[train_rows])
        log.info(
            "training %s on %d sampled vectors%s", plan.factory, len(train),
            f" on GPU 0 of {gpus}" if gpus else "",
        )  # fmt: skip
        work = to_device(index, 0)
        work.train(train)
        index = to_cpu(work)  # the one trained quantizer every shard copies
        del work
    del sample, first  # the sample is not needed to fill
    fill = ShardedFill(
        index, count=count, shards=shards or max(1, gpus), to_device=to_device, to_cpu=to_cpu
    )
    if gpus:
        log.info("filling %s on %d GPU(s)", plan.factory, gpus)

    ids, genres, heap, exact_seconds = _fill_pass(blocks, fill, queries, centre, dim, count)
    built = BuiltIndex(
        index=fill.merged(),
        track_ids=ids,
        genres=genres,
        plan=plan,
        dim=dim,
        exact_qps=len(queries) / exact_seconds if exact_seconds else 0.0,
        gpus=gpus,
        centre=centre,
    )
    truth = _drop_self(heap.I, query_pos, RECALL_K)
    tune(built, queries, query_pos, truth, target=config.recall_target)
    built.build_seconds = time.perf_counter() - start
    return built


def _check_dim(vectors: np.ndarray, dim: int) -> int:
    if vectors.ndim != 2 or (dim and vectors.shape[1] != dim):
        raise ShapeError(
            f"embedding block of shape {vectors.shape}, expected [rows, {dim or 'dim'}]: "
            "labels of different models cannot share an index (set model_version=...)"
        )
    return int(vectors.shape[1])


def _drop_self(found: np.ndarray, self_pos: np.ndarray, k: int) -> np.ndarray:
    """``[q, >k]`` neighbour positions -> ``[q, k]`` without each query's own row."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for i, row in enumerate(found):
        kept = row[(row != self_pos[i]) & (row >= 0)][:k]
        out[i, : len(kept)] = kept
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true neighbours (``truth`` ``[q, k]``, -1 padded) found."""
    hits = total = 0
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


def _candidates(built: BuiltIndex) -> tuple[str, list[int]]:
    if built.plan.trained:
        nlist = built.plan.nlist
        values = [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < nlist]
        return "nprobe", [*values, nlist]
    if built.plan.kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    return "", [0]


def tune(
    built: BuiltIndex,
    queries: np.ndarray,
    query_pos: np.ndarray,
    truth: np.ndarray,
    *,
    target: float,
) -> None:
    """Pick the search parameter reaching recall@10 >= ``target`` at the highest speed.

    Candidates are tried cheapest first; the first that reaches the target wins. If none
    does, the one with the best recall is kept and a warning says so. Sets
    ``built.params``, ``built.recall_at_10`` and ``built.tuning`` (every measurement).
    """
    name, values = _candidates(built)
    k = min(RECALL_K + 1, built.count)
    best: tuple[float, int] | None = None
    for value in values:
        set_search_param(built.index, name, value)
        t0 = time.perf_counter()
        _, found = built.index.search(queries, k)
        seconds = time.perf_counter() - t0
        recall = recall_at_k(_drop_self(found, query_pos, RECALL_K), truth)
        qps = len(queries) / seconds if seconds else float("inf")
        built.tuning.append({"value": value, "recall_at_10": recall, "qps": qps})
        if best is None or recall > best[0]:
            best = (recall, value)
        if recall >= target:
            best = (recall, value)
            break
    assert best is not None
    recall, value = best
    if recall < target:
        log.warning(
            "recall@10 %.3f stays below the target %.2f even at %s=%s; keeping that",
            recall,
            target,
            name,
            value,
        )
    set_search_param(built.index, name, value)
    built.recall_at_10 = recall
    built.params = {name: value} if name else {}


def manifest(built: BuiltIndex, *, version: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``index.json`` of a built index (the keys readers and scripts rely on)."""
    chosen = next(iter(built.params.values()), None)
    tuned = next(
        (t for t in built.tuning if chosen is not None and t["value"] == chosen),
        built.tuning[-1] if built.tuning else {"qps": 0.0},
    )
    return {
        "format": FORMAT,
        "version": version,
        "metric": "inner_product",  # cosine on L2-normalised (centred) signatures
        "centre": None if built.centre is None else [float(v) for v in built.centre],
        "dimension": built.dim,
        "count": built.count,
        "index_type": built.plan.kind,
        "factory": built.plan.factory,
        "params": built.params,
        "recall_at_10": round(built.recall_at_10, 4),
        "qps": round(float(tuned["qps"]), 1),
        "exact_qps": round(built.exact_qps, 1),
        "tuning": [{k: round(float(v), 4) for k, v in t.items()} for t in built.tuning],
        "built_on": f"{built.gpus} GPU(s)" if built.gpus else "CPU",
        "build_seconds": round(built.build_seconds, 2),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {"index": INDEX_FILE, "ids": IDS_FILE, "neighbours": NEIGHBOURS_DIR},
        **extra,
    }
