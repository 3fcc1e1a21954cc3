"""Index build and search: genreflow's tuned index against exact FAISS search, same run.

    .venv/bin/python bench/index_bench.py [--n 1000000] [--dim 256] [--neighbour-rows 20000]

1. Generates ``--n`` clustered unit vectors (``--clusters`` centres plus noise) block by
   block from a seed, so the data never sits in memory twice; builds the index the way
   the index job does (``index_type=auto``, recall target 0.95), recording the plan,
   the tuned ``nprobe``, recall@10, build time and peak memory.
2. Exact search (``IndexFlatIP`` over the same vectors, the baseline) and the tuned
   index on the same held-out queries: queries/s and recall@10 against the exact result.
3. The neighbours table: ``--neighbour-rows`` label rows (and three times as many, for
   the steady state) searched by the Ray Data actor pool (the index job's own stage)
   against a plain in-process loop over the same rows.
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
from genreflow.formats import index as findex
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
    parser.add_argument("--neighbour-rows", type=int, default=20_000)
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

    # the neighbours table: Ray actor pool vs a plain loop, the same rows
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(Path(tmp) / "v-bench")
        info = fidx.manifest(built, version="v-bench", extra={"model_version": "bench"})
        findex.write_version(built.index, built.track_ids, built.genres, folder, info)
        del built
        t0 = time.perf_counter()
        searcher = NeighbourSearcher(folder, k=10)
        load_s = time.perf_counter() - t0
        first = [b for _, b in zip(range(2), blocks(), strict=False)]
        all_ids = np.concatenate([b.track_ids for b in first])
        all_vectors = np.concatenate([b.vectors for b in first])
        small, big = args.neighbour_rows, min(3 * args.neighbour_rows, len(all_ids))
        files = {}
        for rows in (small, big):
            files[rows] = Path(tmp) / f"labels-{rows}.parquet"
            pq.write_table(
                pa.table(
                    {
                        "track_id": pa.array(all_ids[:rows].tolist(), pa.string()),
                        "embedding": pa.array(list(all_vectors[:rows]), pa.list_(pa.float32())),
                        "model_version": pa.array(["bench"] * rows, pa.string()),
                    }
                ),
                files[rows],
            )
        threads = faiss.omp_get_max_threads()
        t0 = time.perf_counter()
        step = 8_192
        for start in range(0, small, step):
            end = start + step
            searcher({"track_id": all_ids[start:end], "embedding": all_vectors[start:end]})
        plain_rate = small / (time.perf_counter() - t0)
        del searcher
        print(
            f"neighbours, plain loop in this process ({threads} FAISS threads, baseline): "
            f"{plain_rate:.0f} rows/s; loading the index version: {load_s:.1f} s",
            flush=True,
        )
        init_ray(num_cpus=2)  # started before the clock: the job's fixed cost, not per row
        seconds = {}
        before = 0  # the table accumulates in the version folder: count what each run adds
        for rows in (small, big):
            ncfg = fidx.IndexConfig(
                neighbours=10,
                resources=fidx.IndexResources(actors=1, cpus_per_actor=1.0, num_cpus=2),
            )
            t0 = time.perf_counter()
            written = _neighbours_table(
                [str(files[rows])], version="bench", folder=folder, config=ncfg
            )
            seconds[rows] = time.perf_counter() - t0
            assert written - before == rows, (written, before, rows)
            before = written
            print(
                f"neighbours, Ray Data job, 1 actor x 1 CPU, {rows} rows: "
                f"{rows / seconds[rows]:.0f} rows/s = {rows / seconds[rows] / plain_rate:.2f}x",
                flush=True,
            )
        steady = (big - small) / (seconds[big] - seconds[small])
        print(
            f"neighbours, Ray Data job steady state (extra rows / extra time): {steady:.0f} "
            f"rows/s = {steady / plain_rate:.2f}x; fixed cost per run about "
            f"{seconds[small] - small / steady:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
