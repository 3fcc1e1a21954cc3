"""Ray Train against a plain PyTorch loop doing the same steps, in one run.

    .venv/bin/python bench/train_bench.py [--tracks-per-genre 16] [--epochs 3]

Builds (once, in bench/_work) a demo catalog and its token shards, then trains the tiny
signature_attention model for the same epochs and batch size twice:

1. plain: the shards read into memory with pyarrow, batches fed to the same
   ``batch_loss`` and optimizer in this process (``--threads`` torch threads);
2. Ray Train: ``genreflow train`` with one worker of ``--threads`` CPUs and torch threads
   (default: every core; 1 is the train config's default).

Reports per-step time of each, their ratio (Ray Train overhead per step), the CPU time
per step of the training process (the bench's process, the Ray Train worker's process),
Ray Train's fixed start-up (wall time minus epoch time) and the time its worker waited
for data.
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

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genreflow.config import load_config
from genreflow.demo_catalog import make_demo_catalog
from genreflow.formats.dataset import mood_index, tokens_numpy
from genreflow.ingest import IngestConfig
from genreflow.models import build_model
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.train import run_train
from genreflow.runtime import init_ray
from genreflow.tokens import TokenSpec
from genreflow.train import TrainConfig, batch_loss

WORK = Path(__file__).resolve().parent / "_work" / "train"


def plain_loop(
    data: Path, *, epochs: int, batch_size: int, threads: int
) -> tuple[float, float, int, float]:
    """Seconds per step of a plain in-process loop over the training split: whole steps
    (batch indexing included), compute only (forward, backward, optimizer step), and the
    process's CPU seconds per step (every thread)."""
    torch.set_num_threads(threads)
    table = pq.read_table(data / "shards")
    train = table.filter(np.array([s == "train" for s in table.column("split").to_pylist()]))
    tokens = torch.from_numpy(tokens_numpy(train.column("tokens")).astype(np.float32))
    genre = torch.tensor(train.column("genre_idx").to_numpy(), dtype=torch.long)
    mood = torch.tensor([mood_index(v) for v in train.column("valence").to_pylist()])
    manifest = json.loads((data / "_dataset.json").read_text())
    torch.manual_seed(0)
    model = build_model(
        "signature_attention",
        TokenSpec.from_dict(manifest["token_spec"]),
        n_genres=len(manifest["labels"]["genre"]),
    )
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # as training does
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-3)
    steps, start, computed, cpu_start = 0, 0.0, 0.0, 0.0
    for epoch in range(epochs):
        if epoch == 1:  # the first epoch warms the allocator, as Ray Train's does
            start, steps, computed = time.perf_counter(), 0, 0.0
            cpu_start = time.process_time()
        order = torch.randperm(len(genre))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch, g, m = tokens[idx], genre[idx], mood[idx]
            step_start = time.perf_counter()
            out = model(batch)
            loss = batch_loss(out, g, m, class_weights=None, mood_loss_weight=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            computed += time.perf_counter() - step_start
            steps += 1
    cpu = (time.process_time() - cpu_start) / steps
    return (time.perf_counter() - start) / steps, computed / steps, steps, cpu


def ray_train(
    data: Path, out: Path, *, epochs: int, batch_size: int, cores: int, extra: list[str]
) -> dict[str, float]:
    """One Ray Train run; per-step times over the epochs after the first."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = run_train(
        load_config(
            TrainConfig,
            overrides=[
                f"epochs={epochs}",
                f"batch_size={batch_size}",
                "lr=0.003",
                f"resources.cpus_per_worker={cores}",
                "class_weighting=none",
                *extra,
            ],
            data=str(data),
            out=str(out),
        )
    )
    wall = time.perf_counter() - started
    history = result.metrics["history"]
    later = history[1:] or history  # skip the warm-up epoch, as the plain loop does
    steps = sum(h["steps"] for h in later)
    first = sum(h["first_batch_wait_seconds"] for h in later)
    return {
        "step": sum(h["train_seconds"] for h in later) / steps,
        "wait": sum(h["data_wait_seconds"] for h in later) / steps,
        "compute": sum(h["compute_seconds"] for h in later) / steps,
        "cpu": sum(h["cpu_seconds"] for h in later) / steps,
        "steady": (sum(h["train_seconds"] for h in later) - first) / steps,
        "steady_wait": (sum(h["data_wait_seconds"] for h in later) - first) / steps,
        "fixed": wall - sum(h["train_seconds"] for h in history),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks-per-genre", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="alternating plain/Ray pairs")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of both loops (= cpus_per_worker); 0: every core",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="Ray Train settings to compare, as 'key=value,key=value' (repeatable); "
        "default: the config's defaults",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=WORK,
        help="folder for the catalog, dataset and runs (bench/label_bench.py reads the default)",
    )
    args = parser.parse_args()
    cores = args.threads or os.cpu_count() or 1
    args.work = args.work.resolve()  # Ray Train's storage_path must be absolute
    manifest = make_demo_catalog(args.work / "catalog", tracks_per_genre=args.tracks_per_genre)
    data = args.work / "dataset"
    run_ingest(load_config(IngestConfig, catalog=str(manifest), out=str(data)))

    # Ray is up before the first round, so every plain loop runs beside the same idle Ray
    # processes (otherwise the first round's would run on a machine without them)
    init_ray(num_cpus=os.cpu_count())
    variants = args.variant or [""]
    plain_runs: list[tuple[float, float, int, float]] = []
    ray_runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    sides: list[str | None] = [None, *variants]  # None: the plain loop
    for round_ in range(args.repeats):
        # alternate, so that drifts of a shared machine hit every side, and rotate the
        # order, so that no side always runs first or right after a Ray Train run
        turn = round_ % len(sides)
        for side in sides[turn:] + sides[:turn]:
            if side is None:
                plain_runs.append(
                    plain_loop(data, epochs=args.epochs, batch_size=args.batch_size, threads=cores)
                )
                continue
            ray_runs[side].append(
                ray_train(
                    data,
                    args.work / "ray-run",
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    cores=cores,
                    extra=[kv for kv in side.split(",") if kv],
                )
            )
    plain_step = float(np.median([r[0] for r in plain_runs]))
    plain_compute = float(np.median([r[1] for r in plain_runs]))
    plain_cpu = float(np.median([r[3] for r in plain_runs]))

    spec = json.loads((data / "_dataset.json").read_text())["token_spec"]
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{cores} torch threads in each loop; "
        f"tiny signature_attention, tokens {spec['n_tokens']}x{spec['n_mels']}, "
        f"batch {args.batch_size}, {plain_runs[0][2]} steps measured per loop, "
        f"medians of {args.repeats} rounds, each side once a round in a rotating order "
        "(ratios: round by round against that round's plain loop, then their median)"
    )
    for variant, runs in ray_runs.items():

        def ray(key: str, runs: list[dict[str, float]] = runs) -> float:
            return float(np.median([r[key] for r in runs]))

        def ratio(key: str, base: int, runs: list[dict[str, float]] = runs) -> str:
            each = [r[key] / p[base] for r, p in zip(runs, plain_runs, strict=True)]
            return " ".join(f"{x:.3f}" for x in each) + f" → **{np.median(each):.3f}**"

        print(f"\nRay Train with {variant or 'the default config'}:")
        print("\n| measure | plain | Ray Train | ratio |\n| --- | --- | --- | --- |")
        rows = [
            ("s/step, whole steps", plain_step, ray("step"), ratio("step", 0)),
            (
                "s/step, without each epoch's first batch",
                plain_step,
                ray("steady"),
                ratio("steady", 0),
            ),
            ("s/step, compute only", plain_compute, ray("compute"), ratio("compute", 1)),
            ("CPU s/step (the training process)", plain_cpu, ray("cpu"), ratio("cpu", 3)),
        ]
        for name, base, value, text in rows:
            print(f"| {name} | {base:.4f} | {value:.4f} | {text} |")
        plain_wait = plain_step - plain_compute
        print(f"| waiting for batches, s/step | {plain_wait:.4f} | {ray('wait'):.4f} | |")
        print(f"| waiting after each epoch's first batch, s/step | | {ray('steady_wait'):.4f} | |")
        print(f"| fixed start and end (wall - epochs), s | | {ray('fixed'):.1f} | |")


if __name__ == "__main__":
    main()
