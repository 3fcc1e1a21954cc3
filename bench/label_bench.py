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
3. peak memory of all processes (RSS and PSS) for the shards and for ``--grow`` times;
4. with ``--memory-grow N``: both loops and memory over the shards repeated N times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import PeakRss
from genreflow import storage
from genreflow.config import load_config
from genreflow.label import LabelConfig, Labeller
from genreflow.pipelines.label import run_label
from genreflow.schema import tokens_numpy

WORK = Path(__file__).resolve().parent / "_work" / "train"


def plain(shards: Path, checkpoint: str, batch_size: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    labeller = Labeller(checkpoint, top_k=3, moments=3, device="cpu")
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


def ray_label(source: Path, checkpoint: str, out: Path, batch_size: int) -> tuple[float, int, int]:
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(
        LabelConfig,
        overrides=[f"batch_size={batch_size}"],
        checkpoint=checkpoint,
        input=str(source),
        out=str(out),
    )
    with PeakRss(pss=True) as memory:
        result = run_label(config)
    # the whole run, as a scheduler sees it (Ray itself is already up: see the warm-up)
    return result.labelled / result.seconds, memory.peak, memory.peak_pss


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
    args = parser.parse_args()
    metrics = json.loads((WORK / "ray-run" / "metrics.json").read_text())
    checkpoint = metrics["best_checkpoint"]
    dataset = WORK / "dataset"
    grown = grown_dataset(dataset, args.grow)
    cores = os.cpu_count() or 1

    import ray

    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_label(dataset, checkpoint, WORK / "labels-warm", args.batch_size)
    plain_rate = plain(dataset / "shards", checkpoint, args.batch_size, WORK / "plain-labels")
    shard_rate, shard_rss, shard_pss = ray_label(
        dataset, checkpoint, WORK / "labels", args.batch_size
    )
    plain_grown = plain(grown / "shards", checkpoint, args.batch_size, WORK / "plain-labels")
    grown_rate, grown_rss, grown_pss = ray_label(
        grown, checkpoint, WORK / "labels-grown", args.batch_size
    )
    raw_rate, _, _ = ray_label(
        WORK / "catalog" / "manifest.csv", checkpoint, WORK / "labels-raw", args.batch_size
    )
    more = None
    if args.memory_grow:
        larger = grown_dataset(dataset, args.memory_grow)
        plain_larger = plain(larger / "shards", checkpoint, args.batch_size, WORK / "plain-labels")
        more = (
            *ray_label(larger, checkpoint, WORK / "labels-grown", args.batch_size),
            plain_larger,
        )
    ray.shutdown()
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
    print(
        f"| from raw audio (decode + tokenize + label), whole run | {rows_1} | "
        f"{plain_rate:.1f} (shards) | {raw_rate:.1f} | {raw_rate / plain_rate:.2f} |"
    )
    fixed = rows_1 / shard_rate - rows_1 / marginal
    print(f"\nfixed cost per job run (x1 time - x1 rows at the steady rate): {fixed:.1f} s")
    print(
        f"\n| peak memory, all processes | x1 | x{args.grow} | ratio |\n| --- | --- | --- | --- |"
    )
    for name, a, b in (("RSS", shard_rss, grown_rss), ("PSS", shard_pss, grown_pss)):
        print(f"| {name}, MiB | {a / 2**20:.0f} | {b / 2**20:.0f} | {b / a:.2f} |")
    if more is not None:
        print(
            f"\nx{args.memory_grow} ({rows_1 * args.memory_grow} tracks), whole runs: plain loop "
            f"{more[3]:.1f} tracks/s, Ray job {more[0]:.1f} tracks/s, ratio "
            f"{more[0] / more[3]:.2f}; peak RSS {more[1] / 2**20:.0f} MiB, "
            f"PSS {more[2] / 2**20:.0f} MiB ({more[2] / grown_pss:.2f} of x{args.grow})"
        )


if __name__ == "__main__":
    main()
