"""Each training-recipe key measured alone against the same run without it.

    .venv/bin/python bench/recipe_bench.py --data bench/_work/quality/dataset-paper000 \\
        [--base "model=signature_attention"] [--seeds 0,1] [--parallel 2]

Trains the base run and the base run plus one recipe setting at a time (``genreflow
train``, as a user types it), for every seed, and prints one table: validation
macro-F1 of the best epoch and test macro-F1 and accuracy of that epoch, mean over the
seeds, with the difference to the base. On a real catalog (bench/music_catalog.py) the
splits are disjoint by album, so the test split is music none of the runs heard.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "cosine + 1 warm-up epoch": ["lr_schedule=cosine", "warmup_epochs=1"],
    "label smoothing 0.1": ["label_smoothing=0.1"],
    "SpecAugment 2+2 masks": ["spec_augment=2"],
    "gain jitter 6 dB": ["gain_jitter_db=6"],
    "offset jitter 0.25": ["offset_jitter=0.25"],
    "mixup 0.2": ["mixup_alpha=0.2"],
    "all but label smoothing": [
        "lr_schedule=cosine", "warmup_epochs=1", "spec_augment=2", "gain_jitter_db=6",
        "offset_jitter=0.25", "mixup_alpha=0.2",
    ],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "recipe")
    parser.add_argument("--base", default="--model signature_attention")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    args = parser.parse_args(argv)
    exe = str(Path(sys.executable).with_name("genreflow"))
    jobs = []
    for name in args.variants.split(","):
        for seed in args.seeds.split(","):
            out = args.work / f"{name.replace(' ', '_').replace('+', '')}-s{seed}"
            words = [exe, "train", *shlex.split(args.base), "--data", str(args.data)]
            jobs.append((name, out, [*words, "--out", str(out), f"seed={seed}", *VARIANTS[name]]))
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    started = time.perf_counter()
    for name, out, words in jobs:
        if (out / "metrics.json").exists():
            continue
        subprocess.run(["rm", "-rf", str(out)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        while len(running) >= args.parallel:
            running = [(p, o) for p, o in running if p.poll() is None]
            time.sleep(1)
        log = open(f"{out}.log", "wb")  # noqa: SIM115 - closed when the process ends
        running.append((subprocess.Popen(words, stdout=log, stderr=subprocess.STDOUT), out))
        print(f"{time.perf_counter() - started:6.0f} s  {name}: {' '.join(words[1:])}", flush=True)
    for proc, out in running:
        if proc.wait() != 0:
            print(f"failed: {out} (see {out}.log)")
    results: dict[str, list[tuple[float, float, float]]] = {}
    for name, out, _ in jobs:
        metrics = json.loads((out / "metrics.json").read_text())
        results.setdefault(name, []).append(
            (
                float(metrics["best_val"]["val_macro_f1"]),
                float(metrics["test"]["macro_f1"]),
                float(metrics["test"]["accuracy"]),
            )
        )
    base = np.mean(results["base"], axis=0) if "base" in results else None
    print(f"\nbase: genreflow train {args.base}; seeds {args.seeds}\n")
    print("| setting | val macro-F1 | test macro-F1 | test accuracy | test macro-F1 vs base |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in results.items():
        val, f1, acc = np.mean(values, axis=0)
        delta = "" if base is None or name == "base" else f"{f1 - base[1]:+.3f}"
        print(f"| {name} | {val:.3f} | {f1:.3f} | {acc:.3f} | {delta} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
