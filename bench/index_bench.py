"""Index build and search: genreflow's tuned index against exact FAISS search, same run.

    .venv/bin/python bench/index_bench.py [--n 1000000] [--dim 256] [--neighbour-rows 50000]

1. Generates ``--n`` clustered unit vectors (``--clusters`` centres plus noise) block by
   block from a seed, so the data never sits in memory twice; builds the index the way
   the index job does (``index_type=auto``, recall target 0.95), recording the plan,
   the tuned ``nprobe``, recall@10, build time and peak memory.
2. Exact search (``IndexFlatIP`` over the same vectors, the baseline) and the tuned
   index on the same held-out queries: queries/s and recall@10 against the exact result.
3. The neighbours table: ``--neighbour-rows`` label rows searched by the Ray Data actor
   pool (the index job's own stage) against a plain in-process loop over the same rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss

from genreflow import index as fidx
from genreflow.pipelines.index import NeighbourSearcher, _neighbours_table
from genreflow.runtime import init_ray

BLOCK = 50_000


def centres(dim: int, clusters: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)


def block(i: int, size: int, dim: int, centre: np.ndarray, spread: float) -> np.ndarray:
    rng = np.random.default_rng(1_000 + i)
    x = centre[rng.integers(0, len(centre), size)] + spread * rng.normal(size=(size, dim)).astype(
        np.float32
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blocks_factory(n: int, dim: int, centre: np.ndarray, spread: float) -> fidx.Blocks:
    def blocks() -> Iterator[fidx.Block]:
        for b, start in enumerate(range(0, n, BLOCK)):
            size = min(BLOCK, n - start)
            ids = np.array([f"t{j}" for j in range(start, start + size)], dtype=object)
            yield fidx.Block(ids, block(b, size, dim, centre, spread))

    return blocks


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument("--spread", type=float, default=1.5)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--neighbour-rows", type=int, default=50_000)
    args = parser.parse_args()
    centre = centres(args.dim, args.clusters, 0)
    blocks = blocks_factory(args.n, args.dim, centre, args.spread)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__} "
        f"({fidx.faiss_gpus()} GPUs), Python {platform.python_version()}",
        flush=True,
    )
    rss0 = peak_rss_mib()
    config = fidx.IndexConfig(recall_target=0.95, tune_queries=args.queries)
    t0 = time.perf_counter()
    built = fidx.build_index(blocks, config=config, gpus=0)
    build_s = time.perf_counter() - t0
    rss_build = peak_rss_mib()
    raw_mib = args.n * args.dim * 4 / 2**20
    print(
        f"build: {built.plan.factory}, params {built.params}, recall@10 (tuning) "
        f"{built.recall_at_10:.3f}, {build_s:.1f} s; peak RSS {rss_build:.0f} MiB "
        f"(before {rss0:.0f}; raw vectors {raw_mib:.0f} MiB)",
        flush=True,
    )
    for t in built.tuning:
        print(f"  nprobe {t['value']:>5}: recall@10 {t['recall_at_10']:.3f}, {t['qps']:.0f} q/s")

    # the baseline: exact search over the same vectors, on fresh queries
    rng = np.random.default_rng(7)
    queries = block(10_000, args.queries, args.dim, centre, args.spread)
    exact = faiss.IndexFlatIP(args.dim)
    for b in blocks():
        exact.add(b.vectors)
    t0 = time.perf_counter()
    _, truth = exact.search(queries, 10)
    exact_qps = len(queries) / (time.perf_counter() - t0)
    del exact
    t0 = time.perf_counter()
    _, found = built.index.search(queries, 10)
    tuned_qps = len(queries) / (time.perf_counter() - t0)
    recall = fidx.recall_at_k(found, truth)
    print(
        f"search: exact {exact_qps:.0f} q/s (baseline); {built.plan.kind} {tuned_qps:.0f} q/s "
        f"= {tuned_qps / exact_qps:.1f}x at recall@10 {recall:.3f} (fresh queries)",
        flush=True,
    )
    del rng

    # the neighbours table: Ray actor pool vs a plain loop, the same rows
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(Path(tmp) / "v-bench")
        info = fidx.manifest(built, version="v-bench", extra={"model_version": "bench"})
        fidx.write_version(built, folder, info)
        del built
        rows = args.neighbour_rows
        first = next(blocks())
        ids, vectors = first.track_ids[:rows], first.vectors[:rows]
        labels = Path(tmp) / "labels.parquet"
        pq.write_table(
            pa.table(
                {
                    "track_id": pa.array(ids.tolist(), pa.string()),
                    "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
                    "model_version": pa.array(["bench"] * len(ids), pa.string()),
                }
            ),
            labels,
        )
        searcher = NeighbourSearcher(folder, k=10)
        t0 = time.perf_counter()
        step = 8_192
        for start in range(0, len(ids), step):
            end = start + step
            searcher({"track_id": ids[start:end], "embedding": vectors[start:end]})
        plain_rate = len(ids) / (time.perf_counter() - t0)
        del searcher
        ncfg = fidx.IndexConfig(neighbours=10, actors=1, cpus_per_actor=1.0, num_cpus=2)
        init_ray(num_cpus=2)  # started before the clock: the job's fixed cost, not per row
        t0 = time.perf_counter()
        written = _neighbours_table([str(labels)], version="bench", folder=folder, config=ncfg)
        ray_rate = written / (time.perf_counter() - t0)
        print(
            f"neighbours table ({len(ids)} rows, k=10): plain loop {plain_rate:.0f} rows/s "
            f"(baseline); Ray Data actor pool {ray_rate:.0f} rows/s = {ray_rate / plain_rate:.2f}x "
            "(Ray already started)",
            flush=True,
        )


if __name__ == "__main__":
    main()
