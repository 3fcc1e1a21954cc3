"""Full-length tracks: what a clip and a duplicate digest cost as a file grows.

    .venv/bin/python bench/long_track_bench.py [--minutes 1 5 20]

Writes FMA-full-like MP3s (44.1 kHz stereo, 320 kbps CBR, as fma_full's best files) of
each length once into bench/_work/long/, then measures on the same files, in one run:

1. the duplicate digest: the whole-file SHA-256 genreflow used before (the baseline)
   against ``file_digest`` (size + three 64 KiB samples);
2. the 30 s clip from the middle: ``load_clip`` with ``clip_from=middle`` (a byte-position
   seek) against decoding from the start and discarding up to the middle (the baseline:
   what an exact libsndfile seek does on an MP3);

each as wall time (best of three) and bytes read by the process (``/proc/self/io``).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genreflow.audio import load_window
from genreflow.decode import file_digest

WORK = Path(__file__).resolve().parent / "_work" / "long"
RATE = 44100


def bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def make_track(minutes: float) -> Path:
    path = WORK / f"track-{minutes:g}min.mp3"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(minutes * 10))
    with sf.SoundFile(
        str(path), "w", RATE, 2, format="MP3", bitrate_mode="CONSTANT", compression_level=0.0
    ) as f:
        for _ in range(int(minutes * 6)):  # 10 s blocks: memory stays small
            t = np.arange(10 * RATE) / RATE
            tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)
            block = tone + 0.05 * rng.standard_normal(t.shape)
            f.write(np.stack([block, np.roll(block, 37)], axis=1).astype(np.float32))
    return path


def whole_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()[:32]


def bounded_digest(path: str) -> str:
    return file_digest(path)


def clip_by_discarding(path: str) -> np.ndarray:
    with sf.SoundFile(path) as f:
        middle = max(0, (f.frames - 30 * f.samplerate) // 2)
        f.seek(middle)  # libsndfile's exact MP3 seek reads every frame before it
        return f.read(30 * f.samplerate, dtype="float32")


def clip_from_middle(path: str) -> np.ndarray:
    return load_window(path, length_s=30.0, offset=lambda d: max(0.0, (d - 30.0) / 2)).samples


def measure(fn: Callable[[str], object], path: str) -> tuple[float, int]:
    best, read = float("inf"), 0
    for _ in range(3):
        before, start = bytes_read(), time.perf_counter()
        fn(path)
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, read = elapsed, bytes_read() - before
    return best, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0, 20.0])
    args = parser.parse_args()
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(
        "| file | size MiB | what | baseline ms | baseline MiB read "
        "| genreflow ms | genreflow MiB read | ratio |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for minutes in args.minutes:
        path = str(make_track(minutes))
        size = Path(path).stat().st_size / 2**20
        pairs: list[tuple[str, Callable[[str], object], Callable[[str], object]]] = [
            ("duplicate digest", whole_sha256, bounded_digest),
            ("30 s clip from the middle", clip_by_discarding, clip_from_middle),
        ]
        for what, baseline, ours in pairs:
            b_s, b_read = measure(baseline, path)
            o_s, o_read = measure(ours, path)
            print(
                f"| {minutes:g} min | {size:.1f} | {what} | {1000 * b_s:.1f} "
                f"| {b_read / 2**20:.2f} | {1000 * o_s:.1f} | {o_read / 2**20:.2f} "
                f"| {b_s / o_s:.1f}x |"
            )


if __name__ == "__main__":
    main()
