"""Every stage on an FMA-shaped catalog of N tracks, as a user types it; cost and memory per size.

    .venv/bin/python bench/scale.py --sizes 10000 106574 [--stages ingest,train,...]

For each N: an FMA catalog (``fma_metadata/`` with the 52-column ``tracks.csv``,
``genres.csv`` and ``echonest.csv`` of ``tests/fma_fixture.py``, and ``fma_large/`` of
short generated MP3 clips at FMA's mix of bitrates, so that per-track overheads
dominate as they do per core on a cluster) with FMA's faults planted at FMA's rates
(files without audio, undecodable files ~0.14%, duplicates ~0.9%). Then each stage runs
as its own ``genreflow`` command with its own local Ray: ingest, train (one epoch,
tiny preset, task=multi), label from audio, index, recommend, analyze, compare (two
models, one epoch). Per stage: wall time, ms per track, the ``genreflow`` process's peak
RSS (the driver; the kernel's high-water mark, read every 0.1 s), the largest Ray worker's
peak RSS, bytes Ray spilled, and the files
written with their size. The last table gives each stage's ratio between the largest and
the smallest N. Catalogs are kept in bench/_work/scale/ and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fma_fixture import audio_path, genre_freq, write_fma  # noqa: E402

WORK = REPO / "bench" / "_work" / "scale"
GENREFLOW = str(Path(sys.executable).with_name("genreflow"))
SPEC = ["spec.sample_rate=16000", "spec.clip_s=2", "spec.n_tokens=2", "spec.token_s=1"]
SPEC += ["spec.n_mels=32"]
CLIP_S = 2.0
RATE = 16000
COMPRESSION = (0.0, 0.3, 0.6, 0.9)  # MP3 compression levels: FMA's 320 ... 128 kbps mix
STAGES = ("ingest", "train", "label", "index", "recommend", "analyze", "compare")
UNDECODABLE_RATE = 150 / 106_574
DUPLICATE_RATE = 937 / 106_574


def _write_clip(args: tuple[str, list[int], int]) -> None:
    path, genres, seed = args
    rng = np.random.default_rng(seed)
    t = np.arange(int(CLIP_S * RATE)) / RATE
    wave = 0.02 * rng.standard_normal(t.shape)
    for g in genres:
        wave += 0.5 / max(1, len(genres)) * np.sin(2 * np.pi * genre_freq(g) * t + rng.random())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), RATE, format="MP3",
             compression_level=COMPRESSION[seed % len(COMPRESSION)])  # fmt: skip


def build_catalog(n: int) -> Path:
    """An FMA of ``n`` tracks under WORK/fma-<n> (reused when complete)."""
    root = WORK / f"fma-{n}"
    done = root / "_complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    fixture = write_fma(root, n_tracks=n, clip_s=CLIP_S, sample_rate=RATE, audio=False)
    rows = list(fixture.tracks[["track_id", "genres_all"]].itertuples(index=False))
    jobs = [(str(audio_path(root, int(t))), list(g), i) for i, (t, g) in enumerate(rows)]
    with mp.Pool(os.cpu_count() or 2) as pool:
        pool.map(_write_clip, jobs, chunksize=256)
    rng = np.random.default_rng(n)
    ids = [int(t) for t, _ in rows]
    for tid in rng.choice(ids, size=max(1, round(UNDECODABLE_RATE * n)), replace=False):
        path = audio_path(root, int(tid))
        path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\x00" * 10 + rng.bytes(20_000))
    for tid in rng.choice(ids, size=max(1, round(DUPLICATE_RATE * n)), replace=False):
        shutil.copyfile(audio_path(root, ids[0]), audio_path(root, int(tid)))
    done.write_text(json.dumps({"tracks": len(ids)}))
    return root


@dataclass
class Measured:
    stage: str
    tracks: int
    seconds: float
    driver_mib: float
    worker_mib: float
    spilled_mib: float
    files: int
    written_mib: float
    returncode: int

    @property
    def ms_per_track(self) -> float:
        return 1000 * self.seconds / max(1, self.tracks)


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def _spilled() -> int:
    total = 0
    for folder in Path("/tmp/ray").glob("session_*/ray_spilled_objects*"):
        total += _tree_size(folder)[1]
    for folder in Path("/tmp/ray").glob("spill*"):
        total += _tree_size(folder)[1]
    return total


def _peak_rss(process: psutil.Process) -> int:
    """A process's peak RSS so far: the kernel's high-water mark (``VmHWM``), which a
    spike between two samples cannot slip past; its current RSS where there is none."""
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(process.memory_info().rss)


def run_stage(stage: str, cmd: list[str], *, tracks: int, out: Path | None) -> Measured:
    """Run one ``genreflow`` command; read its peak RSS and its Ray workers' every 0.1 s."""
    spilled_before = _spilled()
    start = time.perf_counter()
    log = WORK / "logs" / f"{stage}-{tracks}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=WORK)
        driver, worker = 0, 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal driver, worker
            me = psutil.Process(proc.pid)
            while not stop.is_set():
                with contextlib.suppress(psutil.Error):
                    driver = max(driver, _peak_rss(me))
                for p in psutil.process_iter(["name", "cmdline"]):
                    try:
                        name = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
                        if name.startswith("ray::"):
                            worker = max(worker, _peak_rss(p))
                    except (psutil.Error, TypeError, OSError):
                        continue
                stop.wait(0.1)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        returncode = proc.wait()
        stop.set()
        thread.join()
    seconds = time.perf_counter() - start
    files, size = _tree_size(out) if out is not None else (0, 0)
    return Measured(
        stage, tracks, seconds, driver / 2**20, worker / 2**20,
        (_spilled() - spilled_before) / 2**20, files, size / 2**20, returncode,
    )  # fmt: skip


def commands(n: int, root: Path) -> dict[str, tuple[list[str], Path | None]]:
    w = WORK / f"out-{n}"
    return {
        "ingest": ([GENREFLOW, "ingest", "--catalog", str(root), "--out", str(w / "dataset"),
                    "catalog_options.fma_subset=large", "max_error_rate=0.5", *SPEC],
                   w / "dataset"),
        "train": ([GENREFLOW, "train", "--data", str(w / "dataset"), "--out", str(w / "run"),
                   "--model", "baseline_cnn", "task=multi", "epochs=1", "batch_size=64"],
                  w / "run"),
        "label": ([GENREFLOW, "label", "--checkpoint", str(w / "run"), "--input", str(root),
                   "--out", str(w / "labels"), "catalog_options.fma_subset=large",
                   "max_error_rate=0.5"],
                  w / "labels"),
        "index": ([GENREFLOW, "index", "--labels", str(w / "labels"), "--out",
                   str(w / "index")], w / "index"),
        "recommend": ([GENREFLOW, "recommend", "--index", str(w / "index"), "--track-id",
                       _labelled_track(w / "labels"), "-k", "5"], None),
        "analyze": ([GENREFLOW, "analyze", "--labels", str(w / "labels"), "--out",
                     str(w / "report")], w / "report"),
        "compare": ([GENREFLOW, "compare", "--data", str(w / "dataset"), "--out",
                     str(w / "compare"), "--models", "baseline_cnn,signature_attention",
                     "train.epochs=1", "train.batch_size=64", "train.task=multi"],
                    w / "compare"),
    }  # fmt: skip


def _labelled_track(labels: Path) -> str:
    """A track the label stage labelled (the recommend stage asks for its neighbours)."""
    import pyarrow.parquet as pq

    files = sorted(labels.glob("run-*/labels-*.parquet"))
    if not files:
        return "2"  # before labelling: the stage will say the index does not exist
    return str(pq.read_table(files[0], columns=["track_id"]).column(0)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 106_574])
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    memory = psutil.virtual_memory().total / 2**30
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GiB, "
          f"Python {platform.python_version()}")  # fmt: skip
    results: dict[int, dict[str, Measured]] = {}
    for n in args.sizes:
        t0 = time.perf_counter()
        root = build_catalog(n)
        print(f"\nN = {n}: catalog ready in {time.perf_counter() - t0:.0f} s ({root})", flush=True)
        if "ingest" in stages:  # a run from the start; otherwise later stages rerun
            shutil.rmtree(WORK / f"out-{n}", ignore_errors=True)
        results[n] = {}
        for stage in stages:
            cmd, out = commands(n, root)[stage]  # built as the stage starts
            m = run_stage(stage, cmd, tracks=n, out=out)
            results[n][stage] = m
            print(f"| {n} | {stage} | {m.seconds:.1f} | {m.ms_per_track:.2f} | {m.driver_mib:.0f} "
                  f"| {m.worker_mib:.0f} | {m.spilled_mib:.0f} | {m.files} | {m.written_mib:.1f} "
                  f"| {m.returncode} |", flush=True)  # fmt: skip
    print(
        "\n| N | stage | wall s | ms/track | driver peak MiB | largest worker MiB "
        "| spilled MiB | files | written MiB | exit |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, by_stage in results.items():
        for m in by_stage.values():
            print(f"| {n} | {m.stage} | {m.seconds:.1f} | {m.ms_per_track:.2f} "
                  f"| {m.driver_mib:.0f} | {m.worker_mib:.0f} | {m.spilled_mib:.0f} | {m.files} "
                  f"| {m.written_mib:.1f} | {m.returncode} |")  # fmt: skip
    if len(results) > 1:
        small, large = min(results), max(results)
        print(f"\n| stage | ms/track {small} -> {large} | ratio | driver MiB {small} -> {large} "
              "| ratio |")  # fmt: skip
        print("|---|---|---:|---|---:|")
        for stage in stages:
            a, b = results[small][stage], results[large][stage]
            print(f"| {stage} | {a.ms_per_track:.2f} -> {b.ms_per_track:.2f} "
                  f"| {b.ms_per_track / max(a.ms_per_track, 1e-9):.2f} "
                  f"| {a.driver_mib:.0f} -> {b.driver_mib:.0f} "
                  f"| {b.driver_mib / max(a.driver_mib, 1e-9):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
