"""Labelling throughput: the Ray Data label job against a plain in-process torch loop.

    .venv/bin/python bench/label_bench.py [--tracks-per-genre 16] [--grow 5]

Uses the catalog, shards and checkpoint that bench/train_bench.py leaves in
bench/_work/train (run that first). Measures, in one run:

1. from shards: a plain loop (pyarrow reads the shards, the model labels batches in this
   process, the same Labeller code) against the Ray label job (one model actor);
2. from raw audio: the Ray label job decoding the catalog itself;
3. peak memory of all processes labelling the shards and the shards repeated ``--grow``
   times (rows duplicated under new ids).
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
from genreflow.config import load_config
from genreflow.label import LabelConfig, Labeller
from genreflow.pipelines.label import run_label
from genreflow.schema import tokens_numpy

WORK = Path(__file__).resolve().parent / "_work" / "train"


def plain(shards: Path, checkpoint: str, batch_size: int) -> float:
    labeller = Labeller(checkpoint, top_k=3, moments=3, device="cpu")
    files = sorted(shards.glob("*.parquet"))
    start, rows = time.perf_counter(), 0
    for f in files:
        table = pq.read_table(f, columns=["track_id", "tokens", "duration_s", "lyrics"])
        for offset in range(0, table.num_rows, batch_size):
            part = table.slice(offset, batch_size)
            batch = {
                "track_id": part.column("track_id").to_numpy(zero_copy_only=False),
                "tokens": tokens_numpy(part.column("tokens")),
                "duration_s": part.column("duration_s").to_numpy(),
                "lyrics": part.column("lyrics").to_numpy(zero_copy_only=False),
            }
            rows += labeller(batch).num_rows
    return rows / (time.perf_counter() - start)


def metrics_rows(dataset: Path) -> int:
    return int(json.loads((dataset / "_dataset.json").read_text())["counts"]["rows"])


def grown_dataset(source: Path, copies: int) -> Path:
    target = WORK / f"dataset-x{copies}"
    if target.exists():
        return target
    shutil.copytree(source, target)
    for f in sorted((source / "shards").glob("*.parquet")):
        table = pq.read_table(f)
        for c in range(1, copies):
            ids = pa.array([f"{t}-copy{c}" for t in table.column("track_id").to_pylist()])
            pq.write_table(
                table.set_column(0, "track_id", ids), target / "shards" / f"copy{c}-{f.name}"
            )
    manifest = json.loads((source / "_dataset.json").read_text())
    manifest["counts"]["rows"] *= copies
    (target / "_dataset.json").write_text(json.dumps(manifest))
    return target


def ray_label(source: Path, checkpoint: str, out: Path, batch_size: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(
        LabelConfig,
        overrides=[f"batch_size={batch_size}"],
        checkpoint=checkpoint,
        input=str(source),
        out=str(out),
    )
    with PeakRss() as rss:
        result = run_label(config)
    # the whole run, as a scheduler sees it (Ray itself is already up: see the warm-up)
    return result.labelled / result.seconds, rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grow", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    metrics = json.loads((WORK / "ray-run" / "metrics.json").read_text())
    checkpoint = metrics["best_checkpoint"]
    dataset = WORK / "dataset"
    cores = os.cpu_count() or 1

    import ray

    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_label(dataset, checkpoint, WORK / "labels-warm", args.batch_size)
    plain_rate = plain(dataset / "shards", checkpoint, args.batch_size)
    shard_rate, shard_peak = ray_label(dataset, checkpoint, WORK / "labels", args.batch_size)
    raw_rate, _ = ray_label(
        WORK / "catalog" / "manifest.csv", checkpoint, WORK / "labels-raw", args.batch_size
    )
    grown = grown_dataset(dataset, args.grow)
    grown_rate, grown_peak = ray_label(grown, checkpoint, WORK / "labels-grown", args.batch_size)
    ray.shutdown()
    rows = metrics["token_spec"]
    print(
        f"\nmachine: {platform.machine()}, {cores} cores; tiny signature_attention, tokens "
        f"{rows['n_tokens']}x{rows['n_mels']}, batch {args.batch_size}"
    )
    print("\n| measure | tracks/s | ratio |\n| --- | --- | --- |")
    print(f"| plain in-process loop over the shards (baseline) | {plain_rate:.1f} | 1.00 |")
    for name, rate in (("shards", shard_rate), ("raw audio", raw_rate)):
        print(f"| Ray label job from {name} (whole run) | {rate:.1f} | {rate / plain_rate:.2f} |")
    print(
        f"| Ray label job from shards x{args.grow} (whole run) | {grown_rate:.1f} | "
        f"{grown_rate / plain_rate:.2f} |"
    )
    rows_1 = metrics_rows(dataset)
    marginal = (rows_1 * (args.grow - 1)) / (rows_1 * args.grow / grown_rate - rows_1 / shard_rate)
    print(
        f"| Ray label job, steady state (extra rows / extra time, x1 vs x{args.grow}) | "
        f"{marginal:.1f} | {marginal / plain_rate:.2f} |"
    )
    print(
        f"\npeak RSS of all processes: {shard_peak / 2**20:.0f} MiB for the shards, "
        f"{grown_peak / 2**20:.0f} MiB for {args.grow}x the rows "
        f"(ratio {grown_peak / shard_peak:.2f})"
    )


if __name__ == "__main__":
    main()
