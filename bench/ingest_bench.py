"""Ingest throughput: genreflow's decode path and Ray Data job against plain baselines.

    .venv/bin/python bench/ingest_bench.py [--clips 40] [--grow 10]

Writes FMA-like MP3s (44.1 kHz stereo, 320 kbps, 30 s of synthetic music) once into
bench/_work/, then measures in one run, on the same files:

1. per core: ``librosa.load(sr=22050)`` + ``librosa.feature.melspectrogram`` (baseline)
   against genreflow's ``tokenize_track``, with a stage breakdown;
2. all cores: a ``multiprocessing`` pool running the same shard function as the job,
   against the Ray Data ingest job (Ray start excluded from both), on the catalog
   repeated ``--repeat`` times, alternating, best of two each;
3. peak memory (RSS of every process of the run) for the catalog and for the catalog
   grown ``--grow`` times (rows repeated under new ids).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genreflow.audio import load_audio, resample, to_mono
from genreflow.config import load_config
from genreflow.decode import tokenize_track
from genreflow.demo_catalog import STYLES, synth_track
from genreflow.features import log_mel_for_spec
from genreflow.ingest import IngestConfig, ingest_shard
from genreflow.pipelines.ingest import run_ingest
from genreflow.runtime import local_ray_options
from genreflow.tokens import TokenSpec, cut_tokens

WORK = Path(__file__).resolve().parent / "_work"


def _make_clip(args: tuple[int, str]) -> None:
    i, path = args
    genre = sorted(STYLES)[i % len(STYLES)]
    mono, _ = synth_track(genre, 1000 + i, duration_s=30.0)
    up = soxr.resample(mono, 22050, 44100)
    stereo = np.stack([up, np.roll(up, 37) * 0.9], axis=1)
    sf.write(path, stereo, 44100, format="MP3", bitrate_mode="CONSTANT", compression_level=0.0)


def make_clips(n: int) -> list[str]:
    folder = WORK / "fma_like"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"{i:06d}.mp3") for i in range(n)]
    todo = [(i, p) for i, p in enumerate(paths) if not os.path.exists(p)]
    if todo:
        print(f"writing {len(todo)} FMA-like MP3s (44.1 kHz stereo 320 kbps, 30 s) ...", flush=True)
        with mp.Pool() as pool:
            pool.map(_make_clip, todo)
    return paths


def baseline_librosa(path: str) -> np.ndarray:
    import librosa

    y, sr = librosa.load(path, sr=22050)
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128))


def per_core(paths: list[str], spec: TokenSpec) -> dict[str, float]:
    baseline_librosa(paths[0])
    tokenize_track(paths[0], spec)  # warm caches and lazy imports for both
    t = time.perf_counter()
    for p in paths:
        baseline_librosa(p)
    base = len(paths) / (time.perf_counter() - t)
    stages = {"decode": 0.0, "downmix+resample": 0.0, "log-mel+tokens": 0.0}
    t = time.perf_counter()
    for p in paths:
        a = time.perf_counter()
        raw, sr = load_audio(p, max_duration_s=spec.clip_s)
        b = time.perf_counter()
        mono = resample(to_mono(raw), orig_sr=sr, target_sr=spec.sample_rate)
        c = time.perf_counter()
        cut_tokens(log_mel_for_spec(mono[: spec.clip_samples], spec), spec).astype(np.float16)
        d = time.perf_counter()
        stages["decode"] += b - a
        stages["downmix+resample"] += c - b
        stages["log-mel+tokens"] += d - c
    ours = len(paths) / (time.perf_counter() - t)
    return {
        "baseline": base,
        "genreflow": ours,
        **{k: v / len(paths) * 1000 for k, v in stages.items()},
    }


def catalog(paths: list[str], copies: int) -> Path:
    rows = [
        {"track_id": f"{c}-{i}", "uri": p, "genre": sorted(STYLES)[i % len(STYLES)]}
        for c in range(copies)
        for i, p in enumerate(paths)
    ]
    path = WORK / f"catalog-{copies}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pool_shard(args: tuple[pd.DataFrame, str, dict[str, Any], list[str]]) -> int:
    rows, out, spec, vocab = args
    return len(
        ingest_shard(
            rows,
            out=out,
            spec=spec,
            vocabulary=vocab,
            min_duration_s=1.0,
            allow_silent=False,
        )
    )


def pool_ingest(manifest: Path, out: Path, spec: TokenSpec, shard_size: int, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    tracks = pd.read_csv(manifest)
    vocab = sorted(tracks["genre"].unique())
    tracks = tracks.assign(split="train", artist_id=None, valence=np.nan, lyrics=None)
    jobs = [
        (tracks.iloc[i : i + shard_size], str(out), spec.to_dict(), vocab)
        for i in range(0, len(tracks), shard_size)
    ]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_pool_shard, jobs[:workers])  # start-up and imports, as Ray's workers have them
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        pool.map(_pool_shard, jobs, chunksize=1)
        return len(tracks) / (time.perf_counter() - t)


def process_role(proc: psutil.Process, me: int) -> str:
    """What a process of a run is: ``job`` (the measuring process itself), a Ray worker
    by the actor or task it runs (``MapWorker(MapBatches(Labeller))``, ``_StatsActor``,
    ``IDLE``), or one of Ray's services by its program (``gcs_server``, ``raylet``...)."""
    if proc.pid == me:
        return "job"
    cmd = proc.cmdline()
    first = cmd[0] if cmd else proc.name()
    if first.startswith("ray::"):
        name = first[len("ray::") :].split()[0]  # the title names the running method
        return name[: name.rindex(")") + 1] if ")." in name else name.split(".")[0]
    program = next((Path(c).name for c in cmd if c.endswith(".py")), Path(first).name)
    return program.removesuffix(".py")


class PeakRss:
    """Samples the summed memory of this process tree and every Ray process it started.

    ``peak`` sums RSS, which counts a shared page (Ray's object store is shared memory)
    once in every process that touched it; ``peak_pss`` (with ``pss=True``) sums PSS,
    which splits each shared page between the processes mapping it, so shared pages
    count once: the machine's memory actually in use. ``pss_samples`` keeps every
    sample's sum, for the level over a run beside its single highest sample, and
    ``roles`` each sample's PSS by role (``process_role``; processes of one role summed),
    to tell which processes a difference between two runs lies in.
    """

    def __init__(self, *, pss: bool = False) -> None:
        self.peak = 0
        self.peak_pss = 0
        self.pss_samples: list[int] = []
        self.roles: list[dict[str, int]] = []
        self._pss = pss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = total_pss = 0
            roles: dict[str, int] = {}
            procs = [me, *me.children(recursive=True)]
            for proc in procs:
                with contextlib.suppress(psutil.Error):  # a process may end meanwhile
                    if self._pss:
                        info = proc.memory_full_info()
                        total_pss += info.pss
                        total += info.rss
                        role = process_role(proc, me.pid)
                        roles[role] = roles.get(role, 0) + info.pss
                    else:
                        total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self.peak_pss = max(self.peak_pss, total_pss)
            if self._pss:
                self.pss_samples.append(total_pss)
                self.roles.append(roles)
            time.sleep(0.1)

    def roles_at_peak(self) -> dict[str, int]:
        """PSS by role in the sample of the highest total."""
        return self.roles[int(np.argmax(self.pss_samples))] if self.roles else {}

    def roles_median(self) -> dict[str, float]:
        """Each role's median PSS over the samples (0 where it had no process)."""
        names = {name for sample in self.roles for name in sample}
        return {
            name: float(np.median([sample.get(name, 0) for sample in self.roles])) for name in names
        }

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_ingest(manifest: Path, out: Path, shard_size: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(IngestConfig, catalog=str(manifest), out=str(out), shard_size=shard_size)
    with PeakRss() as rss:
        result = run_ingest(config)
    assert result.errors == 0, result.summary()
    return result.clips_per_s, rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--grow", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shard-size", type=int, default=10)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    spec = TokenSpec()
    paths = make_clips(args.clips)

    core = per_core(paths[: min(len(paths), 20)], spec)
    # The job-vs-pool comparison runs on the catalog repeated --repeat times (new ids,
    # same files) so that fixed start-up costs do not dominate, alternating the two.
    repeated = catalog(paths, args.repeat)
    import ray

    ray.init(**local_ray_options(cores), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_ingest(catalog(paths, 1), WORK / "ray-warm", args.shard_size)  # start Ray's workers
    pools, rays = [], []
    for _ in range(2):
        pools.append(pool_ingest(repeated, WORK / "pool-out", spec, args.shard_size, cores))
        rays.append(ray_ingest(repeated, WORK / "ray-out", args.shard_size)[0])
    pool, ray_rate = max(pools), max(rays)
    _, ray_peak = ray_ingest(catalog(paths, 1), WORK / "ray-small", args.shard_size)
    grown_rate, grown_peak = ray_ingest(
        catalog(paths, args.grow), WORK / "ray-grown", args.shard_size
    )
    ray.shutdown()

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {cores} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )
    print(f"clips: {len(paths)} x 30 s MP3, 44.1 kHz stereo, 320 kbps")
    print("\n| measure | clips/s | ratio |\n| --- | --- | --- |")
    print(f"| 1 core: librosa.load + melspectrogram (baseline) | {core['baseline']:.1f} | 1.00 |")
    print(
        f"| 1 core: genreflow tokenize_track | {core['genreflow']:.1f} | "
        f"{core['genreflow'] / core['baseline']:.2f} |"
    )
    print(
        f"| {cores} cores: multiprocessing pool, same shard function (baseline) "
        f"| {pool:.1f} | 1.00 |"
    )
    print(f"| {cores} cores: Ray Data ingest job | {ray_rate:.1f} | {ray_rate / pool:.2f} |")
    print(
        f"(job vs pool on {len(paths) * args.repeat} tracks, best of 2 alternating runs each: "
        f"pool {', '.join(f'{r:.1f}' for r in pools)}; Ray {', '.join(f'{r:.1f}' for r in rays)})"
    )
    print(
        f"| {cores} cores: Ray Data ingest, catalog x{args.grow} | {grown_rate:.1f} | "
        f"{grown_rate / pool:.2f} |"
    )
    print(
        "\nper-clip stages (ms): "
        + ", ".join(f"{k} {core[k]:.1f}" for k in ("decode", "downmix+resample", "log-mel+tokens"))
    )
    print(
        f"peak RSS of all processes: {ray_peak / 2**20:.0f} MiB for {len(paths)} tracks, "
        f"{grown_peak / 2**20:.0f} MiB for {len(paths) * args.grow} tracks "
        f"(ratio {grown_peak / ray_peak:.2f})"
    )


if __name__ == "__main__":
    main()
