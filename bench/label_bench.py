"""Labelling throughput: the Ray Data label job against a plain in-process torch loop.

    .venv/bin/python bench/label_bench.py [--grow 10]

Uses the catalog, shards and checkpoint that bench/train_bench.py leaves in
bench/_work/train (run that first). Measures, in one run:

1. from shards: a plain loop (pyarrow reads the shards, the same Labeller code labels
   batches in this process with every core, and the label rows are written to Parquet,
   as the job does) against the Ray label job with its default settings (on CPUs, one
   single-threaded model actor per core, see ``plan_actors``), over the shards and
   over the shards repeated ``--grow`` times (rows duplicated under new ids);
2. from raw audio: the Ray label job decoding the catalog itself;
3. with ``--memory-grow N``: both loops over the shards repeated N times;
4. peak memory (RSS and PSS) of the label job over the shards repeated each of
   ``--memory-sizes`` times, each in a fresh process with a Ray of its own, so that
   nothing else (the plain loop, an earlier job) is in the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import PeakRss
from genreflow import storage
from genreflow.config import load_config
from genreflow.formats.dataset import tokens_numpy
from genreflow.label import LabelConfig, Labeller
from genreflow.pipelines.label import run_label
from genreflow.runtime import local_ray_options

WORK = Path(__file__).resolve().parent / "_work" / "train"


def plain(shards: Path, checkpoint: str, batch_size: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    # one forward pass per batch on both cores: this loop's fastest (passes of 8 tracks,
    # the model actors' default, labelled 69-89 tracks/s against 92-104: bench/RESULTS.md)
    labeller = Labeller(checkpoint, top_k=3, moments=3, device="cpu", model_batch=batch_size)
    files = sorted(shards.glob("*.parquet"))
    rows = 0
    for f in files:
        table = pq.read_table(f, columns=["track_id", "tokens", "duration_s", "lyrics"])
        labelled = []
        for offset in range(0, table.num_rows, batch_size):
            part = table.slice(offset, batch_size)
            batch = {
                "track_id": part.column("track_id").to_numpy(zero_copy_only=False),
                "tokens": tokens_numpy(part.column("tokens")),
                "duration_s": part.column("duration_s").to_numpy(),
                "lyrics": part.column("lyrics").to_numpy(zero_copy_only=False),
            }
            labelled.append(labeller(batch))
        rows += sum(t.num_rows for t in labelled)
        pq.write_table(pa.concat_tables(labelled), out / f.name)
    return rows / (time.perf_counter() - start)


def metrics_rows(dataset: Path) -> int:
    return int(json.loads((dataset / "_dataset.json").read_text())["counts"]["rows"])


def grown_dataset(source: Path, copies: int) -> Path:
    target = WORK / f"dataset-x{copies}"
    if target.exists() and metrics_rows(target) == metrics_rows(source) * copies:
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    for f in sorted((source / "shards").glob("*.parquet")):
        table = pq.read_table(f)
        for c in range(1, copies):
            ids = pa.array([f"{t}-copy{c}" for t in table.column("track_id").to_pylist()])
            storage.write_parquet_atomic(  # as ingest writes shards
                table.set_column(0, "track_id", ids), str(target / "shards" / f"copy{c}-{f.name}")
            )
    manifest = json.loads((source / "_dataset.json").read_text())
    manifest["counts"]["rows"] *= copies
    (target / "_dataset.json").write_text(json.dumps(manifest))
    return target


def label_config(source: Path, checkpoint: str, out: Path, batch_size: int) -> LabelConfig:
    """The job's default config over ``source`` into an emptied ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    return load_config(
        LabelConfig,
        overrides=[f"resources.batch_size={batch_size}"],
        checkpoint=checkpoint,
        input=str(source),
        out=str(out),
    )


def ray_label(source: Path, checkpoint: str, out: Path, batch_size: int) -> float:
    """The label job's rate over a whole run, as a scheduler sees it (Ray is already up)."""
    result = run_label(label_config(source, checkpoint, out, batch_size))
    return result.labelled / result.seconds


def job_memory(copies: int, checkpoint: str, batch_size: int) -> dict[str, Any]:
    """Peak RSS and PSS, the median and 95th percentile of the PSS samples (every
    0.1 s), and PSS by process role at the peak and in the median, of one label job over
    the shards repeated ``copies`` times, run in a fresh process that starts its own Ray."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-of", str(copies), "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def memory_child(copies: int, checkpoint: str, batch_size: int) -> None:
    import ray

    dataset = WORK / "dataset" if copies == 1 else grown_dataset(WORK / "dataset", copies)
    ray.init(**local_ray_options(os.cpu_count()), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = label_config(dataset, checkpoint, WORK / "labels-memory", batch_size)
    with PeakRss(pss=True) as memory:
        run_label(config)
    ray.shutdown()
    level = np.percentile(memory.pss_samples, [50, 95])
    print(
        json.dumps(
            {
                "rss": memory.peak,
                "pss": memory.peak_pss,
                "pss_p50": float(level[0]),
                "pss_p95": float(level[1]),
                "roles_at_peak": memory.roles_at_peak(),
                "roles_median": memory.roles_median(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grow", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--memory-grow",
        type=int,
        default=0,
        help="also label the shards repeated this many times, plain loop and Ray job",
    )
    parser.add_argument(
        "--memory-sizes",
        default="1,10",
        help="catalog sizes (times the shards) whose label job's peak memory is measured",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="measure only the memory of --memory-sizes"
    )
    parser.add_argument("--memory-of", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    metrics = json.loads((WORK / "ray-run" / "metrics.json").read_text())
    checkpoint = metrics["best_checkpoint"]
    if args.memory_of:
        memory_child(args.memory_of, checkpoint, args.batch_size)
        return
    dataset = WORK / "dataset"
    grown = grown_dataset(dataset, args.grow)
    sizes = [int(n) for n in args.memory_sizes.split(",") if n.strip()]
    for n in sizes:
        if n > 1:
            grown_dataset(dataset, n)
    cores = os.cpu_count() or 1
    if args.memory_only:
        print_memory(
            {n: job_memory(n, checkpoint, args.batch_size) for n in sizes}, metrics_rows(dataset)
        )
        return

    import ray

    ray.init(**local_ray_options(cores), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_label(dataset, checkpoint, WORK / "labels-warm", args.batch_size)
    plain_rate = plain(dataset / "shards", checkpoint, args.batch_size, WORK / "plain-labels")
    shard_rate = ray_label(dataset, checkpoint, WORK / "labels", args.batch_size)
    plain_grown = plain(grown / "shards", checkpoint, args.batch_size, WORK / "plain-labels")
    grown_rate = ray_label(grown, checkpoint, WORK / "labels-grown", args.batch_size)
    raw_rate = ray_label(
        WORK / "catalog" / "manifest.csv", checkpoint, WORK / "labels-raw", args.batch_size
    )
    more = None
    if args.memory_grow:
        larger = grown_dataset(dataset, args.memory_grow)
        plain_larger = plain(larger / "shards", checkpoint, args.batch_size, WORK / "plain-labels")
        more = (ray_label(larger, checkpoint, WORK / "labels-grown", args.batch_size), plain_larger)
    ray.shutdown()
    memory = {n: job_memory(n, checkpoint, args.batch_size) for n in sizes}
    rows_1 = metrics_rows(dataset)
    spec = metrics["token_spec"]
    print(
        f"\nmachine: {platform.machine()}, {cores} cores; tiny signature_attention, tokens "
        f"{spec['n_tokens']}x{spec['n_mels']}, batch {args.batch_size}"
    )
    print("\n| measure | tracks | plain loop, tracks/s | Ray job, tracks/s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| from shards, whole run | {rows_1} | {plain_rate:.1f} | {shard_rate:.1f} | "
        f"{shard_rate / plain_rate:.2f} |"
    )
    print(
        f"| from shards x{args.grow}, whole run | {rows_1 * args.grow} | {plain_grown:.1f} | "
        f"{grown_rate:.1f} | {grown_rate / plain_grown:.2f} |"
    )
    extra = rows_1 * (args.grow - 1)
    marginal = extra / (rows_1 * args.grow / grown_rate - rows_1 / shard_rate)
    plain_marginal = extra / (rows_1 * args.grow / plain_grown - rows_1 / plain_rate)
    print(
        f"| steady state: extra rows / extra time, x1 to x{args.grow} | {extra} | "
        f"{plain_marginal:.1f} | {marginal:.1f} | {marginal / plain_marginal:.2f} |"
    )
    if more is not None:
        print(
            f"| from shards x{args.memory_grow}, whole run | {rows_1 * args.memory_grow} | "
            f"{more[1]:.1f} | {more[0]:.1f} | {more[0] / more[1]:.2f} |"
        )
    print(
        f"| from raw audio (decode + tokenize + label), whole run | {rows_1} | "
        f"{plain_rate:.1f} (shards) | {raw_rate:.1f} | {raw_rate / plain_rate:.2f} |"
    )
    fixed = rows_1 / shard_rate - rows_1 / marginal
    print(f"\nfixed cost per job run (x1 time - x1 rows at the steady rate): {fixed:.1f} s")
    print_memory(memory, rows_1)


def print_memory(memory: dict[int, dict[str, Any]], rows_1: int) -> None:
    if not memory:
        return
    print("\nmemory of one label job in a fresh process (its own Ray), MiB:\n")
    print(
        "| catalog | tracks | peak RSS | peak PSS | PSS median | PSS 95th percentile "
        "| peak, median, 95th against the catalog 10x smaller |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    mib = 2**20
    for n, m in memory.items():
        tenth = memory.get(n // 10) if n % 10 == 0 else None
        against = (
            f"{m['pss'] / tenth['pss']:.2f}, {m['pss_p50'] / tenth['pss_p50']:.2f}, "
            f"{m['pss_p95'] / tenth['pss_p95']:.2f}"
            if tenth
            else ""
        )
        print(
            f"| x{n} | {rows_1 * n} | {m['rss'] / mib:.0f} | {m['pss'] / mib:.0f} "
            f"| {m['pss_p50'] / mib:.0f} | {m['pss_p95'] / mib:.0f} | {against} |"
        )
    for n, m in memory.items():
        tenth = memory.get(n // 10) if n % 10 == 0 else None
        if tenth is None:
            continue
        print(f"\nPSS by process, MiB (processes of one kind summed), x{n // 10} and x{n}:\n")
        print(f"| process | at the peak, x{n // 10} | x{n} | median, x{n // 10} | x{n} |")
        print("| --- | --- | --- | --- | --- |")
        roles = sorted(
            set(m["roles_median"]) | set(tenth["roles_median"]),
            key=lambda r: -m["roles_median"].get(r, 0),
        )
        for role in roles:
            cells = [
                run[key].get(role, 0) / mib
                for key in ("roles_at_peak", "roles_median")
                for run in (tenth, m)
            ]
            if max(cells) >= 1:
                print(f"| {role} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
