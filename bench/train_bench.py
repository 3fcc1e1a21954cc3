"""Ray Train against a plain PyTorch loop doing the same steps, in one run.

    .venv/bin/python bench/train_bench.py [--tracks-per-genre 16] [--epochs 3]

Builds (once, in bench/_work) a demo catalog and its token shards, then trains the tiny
signature_attention model for the same epochs and batch size twice:

1. plain: the shards read into memory with pyarrow, batches fed to the same
   ``batch_loss`` and optimizer in this process (torch threads = cores);
2. Ray Train: ``genreflow train`` with one worker holding every core.

Reports per-step time of each, their ratio (Ray Train overhead per step), Ray Train's
fixed start-up (wall time minus epoch time) and the time its worker waited for data.
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
from genreflow.ingest import IngestConfig, mood_index
from genreflow.models import build_model
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.train import run_train
from genreflow.schema import tokens_numpy
from genreflow.tokens import TokenSpec
from genreflow.train import TrainConfig, batch_loss

WORK = Path(__file__).resolve().parent / "_work" / "train"


def plain_loop(data: Path, *, epochs: int, batch_size: int, threads: int) -> tuple[float, int]:
    """Seconds per step of a plain in-process loop over the training split."""
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
    steps, start = 0, 0.0
    for epoch in range(epochs):
        if epoch == 1:  # the first epoch warms the allocator, as Ray Train's does
            start, steps = time.perf_counter(), 0
        order = torch.randperm(len(genre))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            out = model(tokens[idx])
            loss = batch_loss(out, genre[idx], mood[idx], class_weights=None, mood_loss_weight=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return (time.perf_counter() - start) / steps, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks-per-genre", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    manifest = make_demo_catalog(WORK / "catalog", tracks_per_genre=args.tracks_per_genre)
    data = WORK / "dataset"
    run_ingest(load_config(IngestConfig, catalog=str(manifest), out=str(data)))

    plain_step, plain_steps = plain_loop(
        data, epochs=args.epochs, batch_size=args.batch_size, threads=cores
    )
    out = WORK / "ray-run"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = run_train(
        load_config(
            TrainConfig,
            overrides=[
                f"epochs={args.epochs}",
                f"batch_size={args.batch_size}",
                "lr=0.003",
                f"cpus_per_worker={cores}",
                "class_weighting=none",
            ],
            data=str(data),
            out=str(out),
        )
    )
    wall = time.perf_counter() - started
    history = result.metrics["history"]
    later = history[1:] or history  # skip the warm-up epoch, as the plain loop does
    ray_step = sum(h["train_seconds"] for h in later) / sum(h["steps"] for h in later)
    ray_wait = sum(h["data_wait_seconds"] for h in later) / sum(h["steps"] for h in later)
    steady = sum(h["train_seconds"] - h["first_batch_wait_seconds"] for h in later) / sum(
        h["steps"] for h in later
    )
    steady_wait = sum(h["data_wait_seconds"] - h["first_batch_wait_seconds"] for h in later) / sum(
        h["steps"] for h in later
    )
    epoch_time = sum(h["train_seconds"] for h in history)
    print(
        f"\nmachine: {platform.machine()}, {cores} cores, torch {torch.__version__}; "
        f"tiny signature_attention, tokens {result.metrics['token_spec']['n_tokens']}x"
        f"{result.metrics['token_spec']['n_mels']}, batch {args.batch_size}, "
        f"{plain_steps} steps measured per loop"
    )
    print("\n| measure | value |\n| --- | --- |")
    print(f"| plain PyTorch loop, s/step (baseline) | {plain_step:.3f} |")
    print(f"| Ray Train, s/step (incl. waiting for data) | {ray_step:.3f} |")
    print(f"| ratio Ray Train / plain | {ray_step / plain_step:.2f} |")
    print(f"| Ray Train: waiting for batches, s/step | {ray_wait:.3f} |")
    print(
        f"| Ray Train without each epoch's first batch (shuffle-buffer fill), s/step | "
        f"{steady:.3f} |"
    )
    print(f"| ratio, steady state | {steady / plain_step:.2f} |")
    print(f"| Ray Train: waiting for batches after the first, s/step | {steady_wait:.3f} |")
    print(f"| Ray Train: fixed start and end (wall - epochs), s | {wall - epoch_time:.1f} |")


if __name__ == "__main__":
    main()
