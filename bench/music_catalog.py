"""A real-music evaluation catalog from Debian's free game soundtracks.

    .venv/bin/python bench/music_catalog.py [--out bench/_work/music] [--per-album 20]

Downloads (``apt-get download``, no install, no root needed) thirteen Debian packages
that carry recorded game soundtracks under free licences, unpacks them, and writes one
30 s clip (from the middle of each track, as OGG Vorbis) per track plus
``manifest.csv`` (``track_id, uri, genre, artist_id, album, split``). The synthetic
demo is no test of quality; this is real, produced music.

Each soundtrack is an *album* and ``artist_id`` holds it, so genreflow's splits and
``bench/quality.py``'s are disjoint by album: no recording, and no album, is on both
sides. The ``genre`` is a style assigned per album from what the soundtrack is (its
package description and credits; never from a model's output): ``orchestral``
(symphonic and acoustic fantasy scores), ``electronic`` (techno, trance, electronic
ambient) and ``pop`` (upbeat band and chiptune-flavoured game pop). Labels per album
are coarse, as genre labels in real catalogs are; every method in the benchmark sees
the same ones.

The split: per style, one album is ``test`` and one ``val`` (seeded), the rest
``train``. Nothing here is shipped or trained into genreflow's weights.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent

# Debian package -> style. Only files under a music folder are taken (packages that
# also carry sound effects keep their music apart).
ALBUMS: dict[str, str] = {
    "wesnoth-1.16-music": "orchestral",
    "widelands-data": "orchestral",
    "flare-game": "orchestral",
    "hyperrogue-music": "orchestral",
    "nexuiz-music": "electronic",
    "warzone2100-music": "electronic",
    "singularity-music": "electronic",
    "starfighter-data": "electronic",
    "freedroidrpg-data": "electronic",
    "supertux-data": "pop",
    "planetblupi-music-ogg": "pop",
    "hedgewars-data": "pop",
    "extremetuxracer-data": "pop",
}
MUSIC_PATH = re.compile(r"/music/|/music\.ocg/|/cdtracks/", re.IGNORECASE)
AUDIO = (".ogg", ".opus", ".mp3", ".flac")
CLIP_S = 30.0
MIN_TRACK_S = 45.0  # shorter files are jingles and stingers, not tracks


def fetch(package: str, downloads: Path) -> Path:
    """The unpacked package folder (downloaded and unpacked once)."""
    unpacked = downloads / "x" / package
    if unpacked.is_dir():
        return unpacked
    downloads.mkdir(parents=True, exist_ok=True)
    debs = list(downloads.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=downloads, check=True)
        debs = list(downloads.glob(f"{package}_*.deb"))
    tmp = unpacked.with_name(package + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True)
    for archive in tmp.rglob("*.pk3"):  # zip archives of game data (music inside)
        subprocess.run(["unzip", "-q", "-o", str(archive), "-d", f"{archive}.d"], check=True)
    os.replace(tmp, unpacked)
    return unpacked


def tracks(unpacked: Path) -> list[Path]:
    found = []
    for path in sorted(unpacked.rglob("*")):
        posix = "/" + path.relative_to(unpacked).as_posix()
        if path.suffix.lower() in AUDIO and MUSIC_PATH.search(posix) and path.is_file():
            try:
                if sf.info(str(path)).duration >= MIN_TRACK_S:
                    found.append(path)
            except sf.LibsndfileError:
                continue
    return found


def write_clip(source: Path, target: Path) -> None:
    """30 s from the middle of ``source``, as OGG Vorbis at its own sample rate."""
    info = sf.info(str(source))
    start = int(info.samplerate * max(0.0, info.duration / 2 - CLIP_S / 2))
    samples, rate = sf.read(
        str(source), start=start, frames=int(CLIP_S * info.samplerate), always_2d=True
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(target), samples.astype(np.float32), rate, format="OGG", subtype="VORBIS")


def assign_splits(albums: dict[str, str], seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    split: dict[str, str] = {}
    for style in sorted(set(albums.values())):
        names = sorted(a for a, s in albums.items() if s == style)
        order = rng.permutation(len(names))
        for rank, i in enumerate(order):
            split[names[i]] = "test" if rank == 0 else "val" if rank == 1 else "train"
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "_work" / "music")
    parser.add_argument("--per-album", type=int, default=20, help="tracks per album at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    split = assign_splits(ALBUMS, args.seed)
    rows = []
    for package, style in ALBUMS.items():
        found = tracks(fetch(package, out / "debs"))
        rng = np.random.default_rng(int(hashlib.sha1(package.encode()).hexdigest()[:8], 16))
        chosen = sorted(rng.choice(len(found), size=min(args.per_album, len(found)), replace=False))
        for i in chosen:
            source = found[i]
            track_id = f"{package}--{source.stem}".replace(" ", "_")
            clip = out / "clips" / package / f"{source.stem.replace(' ', '_')}.ogg"
            if not clip.exists():
                write_clip(source, clip)
            rows.append(
                {
                    "track_id": track_id,
                    "uri": str(clip.relative_to(out)),
                    "genre": style,
                    "artist_id": package,
                    "album": package,
                    "split": split[package],
                }
            )
        print(f"{package:24s} {style:11s} {split[package]:5s} {len(chosen):3d} of {len(found)}")
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} clips of {len(ALBUMS)} albums -> {out / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
