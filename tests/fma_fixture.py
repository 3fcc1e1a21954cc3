"""A faithful, generated FMA: ``fma_metadata/`` as FMA ships it and an ``fma_large/`` tree.

``tracks.csv`` has FMA's 52 columns under its two-level header (``utils.load`` in
mdeff/fma reads it: Python-literal lists in ``tags``/``genres``/``genres_all``, dates,
categorical columns), nested subsets small ⊂ medium ⊂ large (full: every track),
``genres.csv`` of the real shape (``genre_id, #tracks, parent, title, top_level``; a
three-level hierarchy with FMA's titles, not a copy of its 163 rows) and
``echonest.csv`` (three header rows) for part of the tracks. ``genre_top`` is a track's
root genre only where all its genres share one root, as in FMA, so many tracks have none.

Audio: a short MP3 per track in which every genre of the track (closed under the
hierarchy) adds its own tone, so single- and multi-label targets are both learnable.
FMA's known faults are planted (:data:`FAULTS`): files with no audio, a clip cut past
the track's real end, a file that does not decode, a duplicate under another id, and a
bogus ``bit_rate``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tests.audio_fixtures import write_audio

# (genre_id, parent, title): FMA's titles and a hierarchy of its shape
GENRES: list[tuple[int, int, str]] = [
    (2, 0, "International"),
    (3, 0, "Blues"),
    (4, 0, "Jazz"),
    (5, 0, "Classical"),
    (10, 0, "Pop"),
    (12, 0, "Rock"),
    (15, 0, "Electronic"),
    (17, 0, "Folk"),
    (21, 0, "Hip-Hop"),
    (38, 0, "Experimental"),
    (25, 12, "Punk"),
    (31, 12, "Metal"),
    (26, 12, "Post-Rock"),
    (101, 31, "Death-Metal"),
    (167, 31, "Black-Metal"),
    (42, 15, "Ambient Electronic"),
    (181, 15, "Techno"),
    (182, 15, "House"),
    (468, 15, "Dubstep"),
    (539, 21, "Rap"),
    (100, 21, "Alternative Hip-Hop"),
    (32, 38, "Noise"),
    (47, 38, "Drone"),
    (49, 17, "Free-Folk"),
    (33, 17, "Psych-Folk"),
    (37, 4, "Jazz: Vocal"),
    (74, 4, "Free-Jazz"),
    (46, 2, "Latin America"),
]

TRACK_COLUMNS: list[tuple[str, str]] = [
    *[
        ("album", c)
        for c in [
            "comments",
            "date_created",
            "date_released",
            "engineer",
            "favorites",
            "id",
            "information",
            "listens",
            "producer",
            "tags",
            "title",
            "tracks",
            "type",
        ]
    ],
    *[
        ("artist", c)
        for c in [
            "active_year_begin",
            "active_year_end",
            "associated_labels",
            "bio",
            "comments",
            "date_created",
            "favorites",
            "id",
            "latitude",
            "location",
            "longitude",
            "members",
            "name",
            "related_projects",
            "tags",
            "website",
            "wikipedia_page",
        ]
    ],
    ("set", "split"),
    ("set", "subset"),
    *[
        ("track", c)
        for c in [
            "bit_rate",
            "comments",
            "composer",
            "date_created",
            "date_recorded",
            "duration",
            "favorites",
            "genre_top",
            "genres",
            "genres_all",
            "information",
            "interest",
            "language_code",
            "license",
            "listens",
            "lyricist",
            "number",
            "publisher",
            "tags",
            "title",
        ]
    ],
]
assert len(TRACK_COLUMNS) == 52  # FMA's tracks.csv

NO_AUDIO_IDS = (99134, 108925, 133297)  # fma_small's three files with no audio
FAULTS = {
    "no_audio": NO_AUDIO_IDS,
    "cut_past_end": (140000,),  # tracks.csv says 300 s; the file holds 0.2 s
    "undecodable": (140001,),  # valid ID3 header, then bytes no decoder reads
    "duplicate": (140002,),  # the same file as another track
    "bogus_bit_rate": (140003,),  # tracks.csv bit_rate -1; the audio is fine
}


@dataclass
class FmaFixture:
    root: Path  # holds fma_metadata/ and fma_large/
    tracks: pd.DataFrame  # one row per track: id, subset, split, genre_top, genres (titles)
    subsets: dict[str, list[int]] = field(default_factory=dict)  # cumulative: small ⊂ medium ...
    duplicate_of: dict[int, int] = field(default_factory=dict)

    @property
    def metadata(self) -> Path:
        return self.root / "fma_metadata"


def _closed(gids: list[int], parent: dict[int, int]) -> list[int]:
    out: list[int] = []
    for g in gids:
        while g and g not in out:
            out.append(g)
            g = parent[g]
    return sorted(out)


def _root(g: int, parent: dict[int, int]) -> int:
    while parent[g]:
        g = parent[g]
    return g


def genre_freq(gid: int) -> float:
    """The tone a genre adds to its tracks' audio."""
    order = sorted(g for g, _, _ in GENRES)
    return 180.0 * 1.09 ** order.index(gid)


def write_fma(
    root: Path,
    *,
    n_tracks: int = 60,
    clip_s: float = 3.0,
    sample_rate: int = 16000,
    seed: int = 0,
    faults: bool = True,
    audio: bool = True,
) -> FmaFixture:
    """Write ``root/fma_metadata`` and ``root/fma_large`` (``n_tracks`` ordinary tracks
    plus, with ``faults``, the planted ones).

    Every track's genres: one or two leaves or inner genres; about a third span two
    roots (no ``genre_top``). Subsets: the first 40% small, next 30% medium, rest large.
    """
    rng = np.random.default_rng(seed)
    parent = {g: p for g, p, _ in GENRES}
    title = {g: t for g, _, t in GENRES}
    gids = [g for g, _, _ in GENRES]
    ids = [int(2 + 7 * i) for i in range(n_tracks)]
    if faults:
        ids += [i for group in FAULTS.values() for i in group]
    rows = []
    for k, tid in enumerate(ids):
        n_genres = 1 + int(rng.random() < 0.45)
        chosen = sorted({int(g) for g in rng.choice(gids, size=n_genres, replace=False)})
        if k % 15 == 14:  # FMA has tracks with no genre at all
            chosen = []
        closed = _closed(chosen, parent)
        roots = {_root(g, parent) for g in closed}
        frac = k / max(1, len(ids))
        subset = "small" if frac < 0.4 else "medium" if frac < 0.7 else "large"
        if tid in NO_AUDIO_IDS:
            subset = "small"
        split = rng.choice(["training", "training", "training", "validation", "test"])
        rows.append(
            {
                "track_id": tid,
                "genres": chosen,
                "genres_all": closed,
                "genre_top": title[next(iter(roots))] if len(roots) == 1 else None,
                "subset": subset,
                "split": str(split),
                "artist": 1000 + k // 3,
            }
        )
    truth = pd.DataFrame(rows)
    meta = root / "fma_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    _write_tracks_csv(meta / "tracks.csv", truth, clip_s=clip_s)
    counts: dict[int, int] = {g: 0 for g in gids}
    for gs in truth["genres_all"]:
        for g in gs:
            counts[g] += 1
    pd.DataFrame(
        {
            "genre_id": gids,
            "#tracks": [counts[g] for g in gids],
            "parent": [parent[g] for g in gids],
            "title": [title[g] for g in gids],
            "top_level": [_root(g, parent) for g in gids],
        }
    ).sort_values("genre_id").to_csv(meta / "genres.csv", index=False)
    _write_echonest(meta / "echonest.csv", truth["track_id"].tolist()[::2], rng)
    fixture = FmaFixture(
        root=root,
        tracks=truth.assign(
            genres_all_titles=[[title[g] for g in gs] for gs in truth["genres_all"]]
        ),
    )
    for name in ("small", "medium", "large"):
        allowed = ("small", "medium", "large")[: ("small", "medium", "large").index(name) + 1]
        fixture.subsets[name] = truth.loc[truth["subset"].isin(allowed), "track_id"].tolist()
    fixture.subsets["full"] = list(fixture.subsets["large"])
    if audio:
        _write_audio_tree(fixture, clip_s=clip_s, sample_rate=sample_rate, faults=faults, rng=rng)
    return fixture


def audio_path(root: Path, tid: int, subset_dir: str = "fma_large") -> Path:
    s = f"{tid:06d}"
    return root / subset_dir / s[:3] / f"{s}.mp3"


def _write_audio_tree(
    fixture: FmaFixture, *, clip_s: float, sample_rate: int, faults: bool, rng: np.random.Generator
) -> None:
    t = np.arange(int(clip_s * sample_rate)) / sample_rate
    special = {i for group in FAULTS.values() for i in group} if faults else set()
    for row in fixture.tracks.itertuples():
        tid = int(row.track_id)
        if tid in special and tid not in FAULTS["bogus_bit_rate"]:
            continue
        wave = 0.02 * rng.standard_normal(t.shape)
        for g in row.genres_all:
            wave += 0.5 / len(row.genres_all) * np.sin(2 * np.pi * genre_freq(g) * t + rng.random())
        write_audio(audio_path(fixture.root, tid), wave[:, None].astype(np.float32), sample_rate)
    if not faults:
        return
    id3_only = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\x00" * 10  # a tag, no audio frames
    for tid in FAULTS["no_audio"]:
        path = audio_path(fixture.root, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(id3_only)
    (cut,) = FAULTS["cut_past_end"]
    short = 0.3 * np.sin(2 * np.pi * 440 * t[: int(0.2 * sample_rate)])
    write_audio(audio_path(fixture.root, cut), short[:, None].astype(np.float32), sample_rate)
    (bad,) = FAULTS["undecodable"]
    path = audio_path(fixture.root, bad)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(id3_only + np.random.default_rng(7).bytes(20_000))
    (dup,) = FAULTS["duplicate"]
    original = int(fixture.tracks["track_id"].iloc[0])
    path = audio_path(fixture.root, dup)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(audio_path(fixture.root, original), path)
    fixture.duplicate_of[dup] = original


def _write_tracks_csv(path: Path, truth: pd.DataFrame, *, clip_s: float) -> None:
    n = len(truth)
    values: dict[tuple[str, str], list[object]] = {c: [None] * n for c in TRACK_COLUMNS}
    for i, row in enumerate(truth.itertuples()):
        tid = int(row.track_id)
        v = {
            ("album", "comments"): 0,
            ("album", "date_created"): "2008-11-26 01:44:45",
            ("album", "date_released"): "2009-01-05 00:00:00",
            ("album", "favorites"): 4,
            ("album", "id"): 1 + int(row.artist),
            ("album", "information"): "<p></p>",
            ("album", "listens"): 6073,
            ("album", "tags"): "[]",
            ("album", "title"): f"Album {row.artist}",
            ("album", "tracks"): 7,
            ("album", "type"): "Album",
            ("artist", "bio"): "<p>An artist, with a comma</p>",
            ("artist", "comments"): 0,
            ("artist", "date_created"): "2008-11-26 01:42:32",
            ("artist", "favorites"): 9,
            ("artist", "id"): int(row.artist),
            ("artist", "latitude"): 40.05,
            ("artist", "location"): "New Jersey",
            ("artist", "longitude"): -74.4,
            ("artist", "name"): f"Artist {row.artist}",
            ("artist", "tags"): "['awol']",
            ("artist", "website"): "http://www.AzillionRecords.blogspot.com",
            ("set", "split"): row.split,
            ("set", "subset"): row.subset,
            ("track", "bit_rate"): -1 if tid in FAULTS["bogus_bit_rate"] else 256000,
            ("track", "comments"): 0,
            ("track", "date_created"): "2008-11-26 01:48:12",
            ("track", "duration"): 300 if tid in FAULTS["cut_past_end"] else int(clip_s),
            ("track", "favorites"): 2,
            ("track", "genre_top"): row.genre_top,
            ("track", "genres"): str(list(row.genres)),
            ("track", "genres_all"): str(list(row.genres_all)),
            ("track", "interest"): 4656,
            ("track", "language_code"): "en",
            ("track", "license"): "Attribution-NonCommercial-ShareAlike 3.0 International",
            ("track", "listens"): 1293,
            ("track", "number"): 3,
            ("track", "tags"): "[]",
            ("track", "title"): f'Track {tid}, "quoted"',
        }
        for key, value in v.items():
            values[key][i] = value
    frame = pd.DataFrame(
        {c: values[c] for c in TRACK_COLUMNS},
        index=pd.Index(truth["track_id"].astype(int), name="track_id"),
    )
    frame.columns = pd.MultiIndex.from_tuples(TRACK_COLUMNS)
    frame.to_csv(path)


def _write_echonest(path: Path, ids: list[int], rng: np.random.Generator) -> None:
    features = ["acousticness", "danceability", "energy", "valence"]
    columns = pd.MultiIndex.from_tuples([("echonest", "audio_features", f) for f in features])
    frame = pd.DataFrame(
        rng.random((len(ids), len(features))),
        index=pd.Index(ids, name="track_id"),
        columns=columns,
    )
    frame.to_csv(path)
