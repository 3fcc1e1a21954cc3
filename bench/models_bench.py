"""CPU training-step speed of every model at its tiny and paper sizes.

    .venv/bin/python bench/models_bench.py [--batch 8] [--steps 3] [--threads N]

One step = forward + backward + Adam update on a batch of the default token spec
(10 x 128 x 172). Variants: fp32 NCHW (the baseline), channels_last, and bf16 autocast.
Prints samples/s per variant and the ratio against fp32 NCHW, measured in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genreflow.models import MODELS, build_model, count_parameters
from genreflow.tokens import TokenSpec


@contextlib.contextmanager
def variant_context(variant: str) -> Iterator[None]:
    if variant == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def step_rate(name: str, preset: str, variant: str, batch: int, steps: int) -> float:
    spec = TokenSpec()
    torch.manual_seed(0)
    model = build_model(name, spec, n_genres=8, preset=preset, vocab_size=2000)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randn(batch, *spec.token_shape) * 15 - 40
    lyrics = torch.randint(0, 2000, (batch, 8, 12))
    genre = torch.arange(batch) % 8
    mood = torch.arange(batch) % 3

    def step() -> None:
        with variant_context(variant):
            out = model(tokens, lyrics=lyrics)
            loss = torch.nn.functional.cross_entropy(out.genre_logits.float(), genre)
            if out.mood_logits is not None:
                loss = loss + torch.nn.functional.cross_entropy(out.mood_logits.float(), mood)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads, batch {args.batch}, tokens 10x128x172\n"
    )
    print("| model | preset | parameters | fp32 NCHW samples/s | channels_last | bf16 autocast |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in MODELS:
        for preset in ("tiny", "paper"):
            params = count_parameters(
                build_model(name, TokenSpec(), n_genres=8, preset=preset, vocab_size=2000)
            )
            base = step_rate(name, preset, "fp32", args.batch, args.steps)
            cells = [f"{base:.1f}"]
            for variant in ("channels_last", "bf16"):
                rate = step_rate(name, preset, variant, args.batch, args.steps)
                cells.append(f"{rate:.1f} ({rate / base:.2f}x)")
            print(f"| {name} | {preset} | {params:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
