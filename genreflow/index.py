"""The similarity index over attention signatures: plan, build, tune, publish, search.

Pure FAISS over iterators of ``(track_ids, vectors)`` blocks; no Ray here. Vectors are
L2-normalised signatures, so cosine similarity is the inner product.

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

import contextlib
import io
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from genreflow import storage
from genreflow.config import path_field
from genreflow.errors import ConfigError, GenreflowError, ShapeError

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
MANIFEST_FILE = "index.json"
NEIGHBOURS_DIR = "neighbours"
FORMAT = "genreflow.index/1"
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
    batch_size: int = 8_192  # vectors per add / search block
    device: Literal["auto", "gpu", "cpu"] = "auto"  # auto: GPUs where there are (on a
    # cluster: where it has or can start them), else the CPU; gpu: fail without one
    gpus: int = 1  # on a cluster: GPUs the build task takes (each fills a range of the rows)
    neighbours: int = 10  # neighbours per track in the table; 0: no table
    neighbours_local_below: int = 20_000  # smaller catalogs: the table is computed in the
    # job's own process (no Ray to start, no actor pool); larger ones by a Ray Data actor pool
    actors: int = 1  # neighbour-search actors, one index copy each
    cpus_per_actor: float = 1.0
    keep_versions: int = 2  # published versions kept (readers of the last one finish)
    seed: int = 0
    address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("exact_below", "train_size", "tune_queries", "batch_size", "actors", "gpus"):
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
                "device=gpu but FAISS sees no GPU (faiss.get_num_gpus() == 0; is faiss-gpu "
                "installed and a CUDA device visible?). Use device=auto to fall back to the CPU."
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
    track_ids: list[str]
    genres: list[str | None]
    plan: IndexPlan
    dim: int
    params: dict[str, Any] = field(default_factory=dict)  # the tuned search parameter
    recall_at_10: float = 1.0
    tuning: list[dict[str, float]] = field(default_factory=list)
    exact_qps: float = 0.0
    build_seconds: float = 0.0
    gpus: int = 0

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
    # pass 1: count, dimension, sample
    n_queries = config.tune_queries
    sample = Reservoir(config.train_size + n_queries, seed=config.seed)
    dim = 0
    for block in blocks():
        dim = _check_dim(block.vectors, dim)
        sample.add(block.vectors)
    count = sample.seen
    if count == 0 or sample.vectors is None:
        raise GenreflowError("no embeddings to index: the labels hold no rows for it")
    plan = plan_index(count, dim, config)
    log.info("indexing %d vectors of dimension %d as %s", count, dim, plan.factory)

    # held-out queries: the sample rows with the largest keys (not trained on)
    order = np.argsort(sample.keys, kind="stable")
    n_queries = min(n_queries, max(1, len(order) // 10) if len(order) > 1 else 1)
    query_rows = order[-n_queries:]
    train_rows = order[:-n_queries] if len(order) > n_queries else order
    queries = np.ascontiguousarray(sample.vectors[query_rows])
    query_pos = sample.positions[query_rows]

    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if gpus and plan.kind == "hnsw":
        log.info("HNSW has no FAISS GPU build; building it on the CPU")
        gpus = 0
    to_device, to_cpu = _gpu_placement(gpus, plan) if gpus else (_on_cpu, lambda i: i)
    if plan.trained:
        train = np.ascontiguousarray(sample.vectors[train_rows])
        log.info(
            "training %s on %d sampled vectors%s", plan.factory, len(train),
            f" on GPU 0 of {gpus}" if gpus else "",
        )  # fmt: skip
        work = to_device(index, 0)
        work.train(train)
        index = to_cpu(work)  # the one trained quantizer every shard copies
        del work
    del sample
    fill = ShardedFill(
        index, count=count, shards=shards or max(1, gpus), to_device=to_device, to_cpu=to_cpu
    )
    if gpus:
        log.info("filling %s on %d GPU(s)", plan.factory, gpus)

    # pass 2: add every block; exact search of the held-out queries against each block
    k = min(RECALL_K + 1, count)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    exact_seconds = 0.0
    ids: list[str] = []
    genres: list[str | None] = []
    for block in blocks():
        vectors = np.ascontiguousarray(block.vectors, dtype=np.float32)
        _check_dim(vectors, dim)
        offset = len(ids)
        fill.add(vectors)
        ids.extend(str(t) for t in block.track_ids)
        block_genres = block.genres if block.genres is not None else [None] * len(vectors)
        genres.extend(g if isinstance(g, str) else None for g in block_genres)
        t0 = time.perf_counter()
        scores = queries @ vectors.T  # [queries, block]
        kb = min(k, len(vectors))
        top = np.argpartition(-scores, kb - 1, axis=1)[:, :kb]
        heap.add_result(
            np.take_along_axis(scores, top, axis=1).astype(np.float32),
            (top + offset).astype(np.int64),
        )
        exact_seconds += time.perf_counter() - t0
    heap.finalize()
    built = BuiltIndex(
        index=fill.merged(),
        track_ids=ids,
        genres=genres,
        plan=plan,
        dim=dim,
        exact_qps=len(queries) / exact_seconds if exact_seconds else 0.0,
        gpus=gpus,
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


def set_search_param(index: faiss.Index, name: str, value: int) -> None:
    if name:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


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
        "metric": "inner_product",  # cosine on L2-normalised signatures
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


def new_version() -> str:
    return f"v-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def write_version(built: BuiltIndex, folder: str, info: dict[str, Any]) -> None:
    """Write the index file, the id map and the version's own manifest into ``folder``."""
    storage.write_bytes_atomic(
        storage.join(folder, INDEX_FILE), faiss.serialize_index(built.index).tobytes()
    )
    ids = pa.table(
        {
            "position": pa.array(np.arange(built.count), pa.int64()),
            "track_id": pa.array(built.track_ids, pa.string()),
            "genre": pa.array(built.genres, pa.string()),
        }
    )
    storage.write_parquet_atomic(ids, storage.join(folder, IDS_FILE))
    storage.write_json_atomic(storage.join(folder, MANIFEST_FILE), info)


def publish(out: str, version: str, info: dict[str, Any], *, keep: int) -> None:
    """Point ``<out>/index.json`` at ``version`` (one atomic write), then delete version
    folders other than the newest ``keep`` published ones (which includes folders an
    interrupted build left unpublished; run one build per folder at a time)."""
    top = storage.join(out, MANIFEST_FILE)
    history: list[str] = []
    if storage.exists(top):
        with contextlib.suppress(GenreflowError):
            history = list(storage.read_json(top).get("published", []))
    history = [v for v in history if v != version] + [version]
    storage.write_json_atomic(top, {**info, "published": history[-keep:]})
    for old in list_versions(out):
        if old not in history[-keep:]:
            log.info("removing index version %s", old)
            _delete_tree(storage.join(out, old))


def list_versions(out: str) -> list[str]:
    fs, path = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("v-")
    )


def _delete_tree(uri: str) -> None:
    fs, path = storage.resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


@dataclass
class LoadedIndex:
    """A published index, ready to search."""

    index: faiss.Index
    track_ids: np.ndarray  # [count] object: position -> track id
    genres: np.ndarray  # [count] object (None where unknown)
    info: dict[str, Any]
    folder: str
    _positions: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def position(self, track_id: str) -> int:
        if self._positions is None:
            self._positions = {str(t): i for i, t in enumerate(self.track_ids)}
        try:
            return self._positions[str(track_id)]
        except KeyError:
            examples = ", ".join(map(str, self.track_ids[:3]))
            raise GenreflowError(
                f"track id {track_id!r} is not in the index {self.folder!r} "
                f"({self.count} tracks, e.g. {examples}); was it labelled by model "
                f"{self.info.get('model_version')}?"
            ) from None

    def search(
        self, vectors: np.ndarray, k: int, *, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each row of ``vectors`` ``[q, dim]``.

        Args:
            exclude: ``[q]`` positions to leave out of each row's results (the query
                track itself), or -1.

        Returns:
            ``(scores [q, k] float32, positions [q, k] int64)``, best first, -1 padded.

        Raises:
            ShapeError: ``vectors`` of another dimension than the index.
            GenreflowError: an empty index.
        """
        if self.count == 0:
            raise GenreflowError(f"the index {self.folder!r} is empty: nothing to recommend")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ShapeError(
                f"query vectors of shape {vectors.shape}, the index holds dimension "
                f"{self.dim} (model {self.info.get('model_version')}): embed the query with "
                f"the index's checkpoint {self.info.get('checkpoint')!r}"
            )
        extra = 1 if exclude is not None else 0
        scores, found = self.index.search(vectors, min(k + extra, self.count))
        if exclude is None:
            return _pad(scores, found, k)
        keep_s = np.full((len(found), k), -np.inf, dtype=np.float32)
        keep_i = np.full((len(found), k), -1, dtype=np.int64)
        for r in range(len(found)):
            mask = (found[r] != exclude[r]) & (found[r] >= 0)
            s, i = scores[r][mask][:k], found[r][mask][:k]
            keep_s[r, : len(s)], keep_i[r, : len(i)] = s, i
        return keep_s, keep_i

    def vector(self, track_id: str) -> np.ndarray:
        """The stored vector of a catalog track ``[dim]`` (exact for Flat/IVF/HNSW,
        the PQ reconstruction for IVF-PQ)."""
        pos = self.position(track_id)
        if isinstance(self.index, faiss.IndexIVF):
            self.index.make_direct_map()
        return np.asarray(self.index.reconstruct(pos), dtype=np.float32)

    def recommend(self, track_id: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` most similar catalog tracks to a catalog track, itself excluded."""
        pos = self.position(track_id)
        scores, found = self.search(self.vector(track_id)[None], k, exclude=np.array([pos]))
        return self.rows(scores[0], found[0])

    def rows(self, scores: np.ndarray, positions: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"track_id": str(self.track_ids[p]), "score": float(s), "genre": self.genres[p]}
            for s, p in zip(scores, positions, strict=True)
            if p >= 0
        ]


def _pad(scores: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if found.shape[1] >= k:
        return scores[:, :k], found[:, :k]
    pad = k - found.shape[1]
    return (
        np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
        np.pad(found, ((0, 0), (0, pad)), constant_values=-1),
    )


def open_index(out: str) -> LoadedIndex:
    """Load the published index of ``out`` (the version its ``index.json`` names).

    Raises:
        GenreflowError: no published index there, or an unreadable one.
    """
    top = storage.join(out, MANIFEST_FILE)
    if not storage.exists(top):
        raise GenreflowError(
            f"no index in {out!r} (no {MANIFEST_FILE}): build one with "
            "`genreflow index --labels DIR --out DIR`"
        )
    info = storage.read_json(top)
    if info.get("format") != FORMAT:
        raise GenreflowError(f"{top!r} is not a genreflow index manifest ({FORMAT})")
    return load_version(storage.join(out, info["version"]))


def load_version(folder: str) -> LoadedIndex:
    """Load one version folder (a published one, or one being built)."""
    info = storage.read_json(storage.join(folder, MANIFEST_FILE))
    raw = storage.read_bytes(storage.join(folder, INDEX_FILE))
    try:
        index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
    except RuntimeError as exc:
        raise GenreflowError(f"cannot read the FAISS index in {folder!r}: {exc}") from exc
    ids = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(folder, IDS_FILE))))
    name = next(iter(info.get("params") or {}), "")
    if name:
        set_search_param(index, name, info["params"][name])
    return LoadedIndex(
        index=index,
        track_ids=np.asarray(ids.column("track_id").to_pylist(), dtype=object),
        genres=np.asarray(ids.column("genre").to_pylist(), dtype=object),
        info=info,
        folder=folder,
    )
