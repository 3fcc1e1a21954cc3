"""The index job: label embeddings -> a tuned FAISS index, published atomically, plus a
neighbours table computed by a Ray Data actor pool."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genreflow import faultpoints, storage
from genreflow import index as fidx
from genreflow.entry import mark_started
from genreflow.errors import ConfigError, GenreflowError
from genreflow.formats import index as findex
from genreflow.formats.index import NEIGHBOURS_SCHEMA
from genreflow.formats.labels import label_files
from genreflow.resources import IndexResources
from genreflow.runtime import (
    check_actor_fit,
    cluster_gpus,
    init_ray,
    read_parquet_files,
    wants_gpus,
)

log = logging.getLogger(__name__)


@dataclass
class IndexResult:
    out: str
    folder: str
    info: dict[str, Any]
    neighbour_rows: int
    seconds: float

    def summary(self) -> str:
        info = self.info
        params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "exact"
        text = (
            f"index -> {self.folder}: {info['count']} tracks of dimension {info['dimension']}, "
            f"{info['index_type']} ({info['factory']}, {params}) built on {info['built_on']}; "
            f"recall@10 {info['recall_at_10']:.3f} at {info['qps']:.0f} queries/s "
            f"(exact search {info['exact_qps']:.0f}/s); model {info['model_version']}"
        )
        if self.neighbour_rows:
            text += f"; neighbours table: {self.neighbour_rows} rows"
        return text + f"; {self.seconds:.1f} s."


def embedding_blocks(files: list[str], *, version: str, batch_size: int) -> Iterator[fidx.Block]:
    """Stream ``(track_id, embedding, genre)`` blocks of one model version; each track
    once (the first row met wins). Embeddings go from Arrow to NumPy without a Python
    object per number."""
    seen: set[str] = set()
    for uri in files:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle)
            columns = ["track_id", "genre", "embedding", "model_version"]
            for batch in reader.iter_batches(batch_size=batch_size, columns=columns):
                block = _new_rows(batch, version=version, seen=seen, uri=uri)
                if block is not None:
                    yield block


def _new_rows(
    batch: pa.RecordBatch, *, version: str, seen: set[str], uri: str
) -> fidx.Block | None:
    """The rows of ``batch`` of model ``version`` whose track is not in ``seen`` (added
    to it), as a block; None if there are none."""
    batch = batch.filter(pc.equal(batch.column("model_version"), version))
    ids: list[str] = batch.column("track_id").to_pylist()
    keep: list[int] = []
    for i, track in enumerate(ids):
        if track not in seen:
            seen.add(track)
            keep.append(i)
    if not keep:
        return None
    if len(keep) < len(ids):
        batch = batch.take(pa.array(keep))
        ids = [ids[i] for i in keep]
    emb = batch.column("embedding")
    dim = len(emb[0])
    flat = emb.flatten().to_numpy(zero_copy_only=False)
    if len(flat) != dim * len(ids):
        raise GenreflowError(f"{uri!r}: embeddings of differing lengths")
    return fidx.Block(
        np.asarray(ids, dtype=object),
        np.ascontiguousarray(flat.reshape(len(ids), dim), dtype=np.float32),
        np.asarray(batch.column("genre").to_pylist(), dtype=object),
    )


def run_index(config: fidx.IndexConfig) -> IndexResult:
    """Build, tune and publish the index of ``config.labels`` into ``config.out``.

    On a local run the index is built in this process (on the GPUs FAISS sees here, if
    any). On a cluster (an address or ``RAY_ADDRESS``) the driver, which may sit on a
    head without GPUs, only plans and publishes: with ``device`` auto or gpu, and GPUs
    the cluster has or its autoscaler can start, a Ray task holding ``gpus`` GPUs builds
    and writes the version folder.
    """
    start = time.perf_counter()
    for key in ("labels", "out"):
        if not getattr(config, key):
            raise ConfigError(f"no {key} given: set {key}=... (or --{key} ...)")
    task_gpus = _build_task_gpus(config)
    files, version, checkpoint = label_files(config.labels, config.model_version)
    mark_started()
    name = findex.new_version()
    folder = storage.join(config.out, name)
    extra = {
        "model_version": version,
        "checkpoint": checkpoint,
        "labels": config.labels,
        "neighbours_k": config.neighbours,
    }
    request: dict[str, Any] = {
        "files": files, "version": version, "name": name, "out": config.out,
        "extra": extra, "config": config,
    }  # fmt: skip
    if task_gpus:
        import ray

        log.info(
            "building the index in a task on %d GPU(s) (the autoscaler starts one if none is up)",
            task_gpus,
        )
        build = ray.remote(num_gpus=task_gpus, num_cpus=1, max_retries=0)(_build_in_task)
        info = ray.get(build.remote(request))
    else:
        info = build_version(**request)
    faultpoints.reached("index:version-written")
    rows = 0
    if config.neighbours and _table_is_small(info, config.resources):
        rows = _neighbours_in_process(files, version=version, folder=folder, config=config)
    elif config.neighbours:
        rows = _neighbours_table(files, version=version, folder=folder, config=config)
    faultpoints.reached("index:before-publish")
    findex.publish(config.out, name, info, keep=config.keep_versions)
    return IndexResult(
        out=config.out,
        folder=folder,
        info=info,
        neighbour_rows=rows,
        seconds=time.perf_counter() - start,
    )


def _table_is_small(info: dict[str, Any], resources: IndexResources) -> bool:
    """Whether the neighbours table is seconds of work, computed in this process rather
    than by an actor pool whose start alone costs more: a catalog under
    ``neighbours_local_below`` tracks, or one the tuned index searches in under
    ``neighbours_local_s`` seconds (106,574 tracks of 16 dimensions: about 1.3 s)."""
    count, qps = int(info["count"]), float(info.get("qps") or 0.0)
    if count < resources.neighbours_local_below:
        return True
    return (
        resources.neighbours_local_s > 0 and qps > 0 and count / qps < resources.neighbours_local_s
    )


def _build_task_gpus(config: fidx.IndexConfig) -> int:
    """GPUs a build task should take (0: build in this process).

    Raises:
        ConfigError: ``device=gpu`` where no GPU is or can be had.
    """
    if config.resources.device == "cpu" or not (
        config.resources.address or os.environ.get("RAY_ADDRESS")
    ):
        # resources.device=gpu without a GPU here: refused
        fidx.select_gpus(config.resources.device, fidx.faiss_gpus())
        return 0
    init_ray(config.resources.address, num_cpus=config.resources.num_cpus)
    present, possible = cluster_gpus()
    if config.resources.device == "gpu" and not (present or possible):
        raise ConfigError(
            "resources.device=gpu but this cluster has no GPU and its autoscaler can start none; "
            "use resources.device=auto to build on the CPU"
        )
    if not wants_gpus("auto", present=present, possible=possible, what="index build"):
        return 0
    return config.resources.gpus


def build_version(
    files: list[str],
    *,
    version: str,
    name: str,
    out: str,
    extra: dict[str, Any],
    config: fidx.IndexConfig,
) -> dict[str, Any]:
    """Build and tune the index of the label ``files`` of model ``version`` on the GPUs
    FAISS sees where this runs (none: the CPU), and write it as version ``name`` in
    ``out`` (unpublished); its manifest.

    Runs in the job's process, or in a Ray task holding the GPUs on a cluster.

    Raises:
        ConfigError: ``device=gpu`` and FAISS sees no GPU here.
    """
    available = fidx.faiss_gpus()
    gpus = fidx.select_gpus(config.resources.device, available)
    if config.resources.device == "auto" and not available and _holds_gpus():
        log.warning(
            "this build holds a GPU but FAISS sees none (is faiss-cpu installed instead of "
            "faiss-gpu?); building on the CPU"
        )

    def blocks() -> Iterator[fidx.Block]:
        return embedding_blocks(files, version=version, batch_size=config.resources.batch_size)

    built = fidx.build_index(blocks, config=config, gpus=gpus)
    info = fidx.manifest(built, version=name, extra=extra)
    findex.write_version(built.index, built.track_ids, built.genres, storage.join(out, name), info)
    return info


def _build_in_task(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`build_version` as a Ray task's function."""
    return build_version(**request)


def _holds_gpus() -> bool:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return bool(visible and visible.strip() not in ("", "-1"))


class NeighbourSearcher:
    """Loads an index version once per actor; maps embedding batches to neighbour rows."""

    def __init__(self, folder: str, *, k: int) -> None:
        self.loaded = findex.load_version(folder)
        self.k = k

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ids = [str(t) for t in batch["track_id"]]
        embedding = batch["embedding"]
        vectors = (
            embedding
            if isinstance(embedding, np.ndarray) and embedding.ndim == 2
            else np.stack([np.asarray(e, dtype=np.float32) for e in embedding])
        )
        own = np.array([self.loaded.position(t) for t in ids], dtype=np.int64)
        return self.table(ids, vectors, own)

    def table(self, ids: list[str], vectors: np.ndarray, own: np.ndarray) -> pa.Table:
        """The neighbour rows of tracks ``ids`` at index positions ``own``."""
        scores, found = self.loaded.search(vectors, self.k, exclude=own)
        valid = found >= 0  # [rows, k]; fewer tracks than k leaves -1 at the end
        offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
        neighbour = pa.StructArray.from_arrays(
            [
                self.loaded.track_ids.take(pa.array(found[valid])),
                pa.array(scores[valid], pa.float32()),
            ],
            names=["track_id", "score"],
        )
        return pa.table(
            {
                "track_id": pa.array(ids, pa.string()),
                "neighbours": pa.ListArray.from_arrays(pa.array(offsets), neighbour),
            },
            schema=NEIGHBOURS_SCHEMA,
        )


def _neighbours_in_process(
    files: list[str], *, version: str, folder: str, config: fidx.IndexConfig
) -> int:
    """The neighbours table of a small catalog, block by block in this process: the
    same searcher and rows as the actor pool's, without starting Ray for seconds of
    work. One file per block, each written whole."""
    searcher = NeighbourSearcher(folder, k=config.neighbours)
    out = storage.join(folder, findex.NEIGHBOURS_DIR)
    rows = 0
    blocks = embedding_blocks(files, version=version, batch_size=config.resources.batch_size)
    for i, block in enumerate(blocks):
        # the blocks come in the order the index was filled: a block's tracks sit at
        # positions rows.. on, with no id lookup (checked, in case the labels changed)
        own = np.arange(rows, rows + len(block.track_ids), dtype=np.int64)
        stored = searcher.loaded.track_ids[rows : rows + len(own)]
        if stored.to_pylist() != list(block.track_ids):
            own = np.array([searcher.loaded.position(t) for t in block.track_ids], dtype=np.int64)
        table = searcher.table([str(t) for t in block.track_ids], block.vectors, own)
        storage.write_parquet_atomic(table, storage.join(out, f"part-{i:05d}.parquet"))
        rows += table.num_rows
    return rows


def _neighbours_table(
    files: list[str], *, version: str, folder: str, config: fidx.IndexConfig
) -> int:
    init_ray(config.resources.address, num_cpus=config.resources.num_cpus)
    check_actor_fit(
        config.resources.actors,
        config.resources.cpus_per_actor,
        what="neighbour search",
        address=config.resources.address,
    )
    import ray
    from ray.data.expressions import col

    ds = (
        read_parquet_files(
            storage.with_sizes(files), columns=["track_id", "embedding", "model_version"]
        )
        .filter(expr=col("model_version") == version)
        .select_columns(["track_id", "embedding"])
    )
    out = storage.join(folder, findex.NEIGHBOURS_DIR)
    out_fs, out_path = storage.resolve(out)
    ds.map_batches(
        NeighbourSearcher,
        fn_constructor_kwargs={"folder": folder, "k": config.neighbours},
        batch_size=config.resources.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.resources.actors),
        num_cpus=config.resources.cpus_per_actor,
    ).write_parquet(out_path, filesystem=out_fs)
    written = storage.list_files(out, suffix=".parquet")
    return sum(t.num_rows for t in storage.read_parquet_columns(written, ["track_id"]))


def embed_audio(uri: str, checkpoint: str, *, expected_version: str | None) -> np.ndarray:
    """The L2-normalised signature ``[dim]`` of one audio file, by ``checkpoint``.

    Raises:
        AudioError: the file cannot be used; GenreflowError: the checkpoint is not the
        model the index was built from.
    """
    from genreflow.decode import decode_one
    from genreflow.label import Labeller

    labeller = Labeller(checkpoint, top_k=1, moments=1, device="cpu")
    if expected_version and labeller.loaded.version != expected_version:
        raise GenreflowError(
            f"checkpoint {checkpoint!r} is model {labeller.loaded.version}, the index holds "
            f"signatures of model {expected_version}: their embeddings are not comparable"
        )
    tokens, _ = decode_one(uri, labeller.loaded.spec)
    return labeller.embed(tokens[None])[0]
