"""Training killed and resumed against an uninterrupted run, by number of workers.

    .venv/bin/python bench/resume_bench.py [--workers 1 2] [--epochs 3] [--cache auto|never]

Builds (once, in bench/_work/resume) a small demo dataset, then for each worker count
trains the tiny signature_attention model three ways with ``genreflow train``, each in
its own process with its own local Ray, all ``deterministic=true`` and the same seed:

1. uninterrupted;
2. SIGKILLed (the whole process group: driver, Ray, workers) once its first checkpoint
   is registered, mid-run;
3. that run continued with ``resume=true``.

Prints, per worker count, the largest difference between the final weights of (1) and
(3), and between their test metrics: the tolerance docs/crash-safety.md states.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genreflow import checkpoint as ckpt
from genreflow.demo_catalog import make_demo_catalog
from genreflow.pipelines.train import SNAPSHOT_FILE

WORK = Path(__file__).resolve().parent / "_work" / "resume"
GENREFLOW = [sys.executable, "-m", "genreflow.cli"]


def command(*args: str) -> list[str]:
    return [*GENREFLOW, *args]


def environment() -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": ""}  # each command starts its own local Ray


def dataset(tracks_per_genre: int) -> Path:
    data = WORK / f"dataset-{tracks_per_genre}"
    if not (data / "_dataset.json").exists():
        manifest = make_demo_catalog(
            WORK / f"catalog-{tracks_per_genre}",
            tracks_per_genre=tracks_per_genre,
            duration_s=8.0,
            genres=["ambient", "electronic", "rock"],
        )
        spec = ["spec.clip_s=8", "spec.n_tokens=4", "spec.token_s=2.0", "spec.n_mels=64"]
        subprocess.run(
            command("ingest", "--catalog", str(manifest), "--out", str(data), *spec),
            env=environment(),
            check=True,
        )
    return data


def first_checkpoint_registered(run: Path) -> bool:
    snapshot = run / "checkpoints" / "run" / SNAPSHOT_FILE
    try:
        return len(json.loads(snapshot.read_text())["checkpoint_results"]) >= 1
    except (OSError, ValueError, KeyError):
        return False


def killed(cmd: list[str], run: Path, timeout_s: float = 600.0) -> bool:
    """Run ``cmd`` and SIGKILL its process group once ``run`` has a checkpoint."""
    proc = subprocess.Popen(
        cmd,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if first_checkpoint_registered(run):
                return proc.poll() is None
            time.sleep(0.02)
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    folders = [p for p in (run / "checkpoints" / "run").glob("checkpoint_*") if p.is_dir()]
    states = [ckpt.load(str(p)) for p in folders]
    return max(states, key=lambda state: int(state["epoch"]))["state_dict"]


def compare(workers: int, data: Path, epochs: int, cache: str) -> dict[str, object]:
    settings = [f"epochs={epochs}", "batch_size=8", "lr=0.003", "deterministic=true",
                f"resources.num_workers={workers}", "resources.cpus_per_worker=0.5",
                f"resources.cache={cache}"]  # fmt: skip
    clean, interrupted = WORK / f"clean-{workers}", WORK / f"resumed-{workers}"
    for run in (clean, interrupted):
        shutil.rmtree(run, ignore_errors=True)
    train = ["train", "--data", str(data)]
    subprocess.run(command(*train, "--out", str(clean), *settings), env=environment(), check=True)
    was_killed = killed(command(*train, "--out", str(interrupted), *settings), interrupted)
    subprocess.run(
        command(*train, "--out", str(interrupted), *settings, "resume=true"),
        env=environment(),
        check=True,
    )
    a, b = final_weights(clean), final_weights(interrupted)
    largest = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    ta = json.loads((clean / "metrics.json").read_text())["test"]
    tb = json.loads((interrupted / "metrics.json").read_text())["test"]
    return {
        "workers": workers,
        "datasets": {"auto": "prepared on the driver", "never": "streamed"}.get(cache, cache),
        "killed mid-run": was_killed,
        "largest weight difference": largest,
        "bit-identical": all(torch.equal(a[k], b[k]) for k in a),
        "test accuracy, clean vs resumed": (ta["accuracy"], tb["accuracy"]),
        "test log-loss, clean vs resumed": (ta["log_loss"], tb["log_loss"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tracks-per-genre", type=int, default=12)
    parser.add_argument("--cache", default="auto", help="resources.cache: auto, never, always")
    args = parser.parse_args(argv)
    data = dataset(args.tracks_per_genre)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    for workers in args.workers:
        print(json.dumps(compare(workers, data, args.epochs, args.cache)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
