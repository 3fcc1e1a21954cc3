"""Duplicate audio found from the shards' digests: the columnar search agrees with the
plain one it replaced, on the cases that decide which track is the original."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genreflow.ingest import Duplicate, find_duplicates

COLUMNS = ["track_id", "split", "uri", "audio_sha256", "clip_sha256"]
Row = tuple[str, str | None, str, str | None, str | None]


def _digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _reference(rows: list[Row]) -> list[Duplicate]:
    """The plain search: walk the tracks in id order, remember the first of each digest."""

    def order(track_id: str) -> tuple[int, int, str]:
        return (0, int(track_id), "") if track_id.isdigit() else (1, 0, track_id)

    first_file: dict[str, str] = {}
    first_clip: dict[str, str] = {}
    found: list[Duplicate] = []
    for track_id, split, uri, file_hash, clip_hash in sorted(rows, key=lambda r: order(r[0])):
        if file_hash and file_hash in first_file:
            found.append(Duplicate(track_id, uri, split, first_file[file_hash], "file"))
        elif clip_hash and clip_hash in first_clip:
            found.append(Duplicate(track_id, uri, split, first_clip[clip_hash], "clip"))
        else:
            if file_hash:
                first_file.setdefault(file_hash, track_id)
            if clip_hash:
                first_clip.setdefault(clip_hash, track_id)
    return found


def _write_shards(out: Path, rows: list[Row], per_shard: int) -> None:
    shards = out / "shards"
    shards.mkdir(parents=True)
    for i in range(0, len(rows), per_shard):
        part = rows[i : i + per_shard]
        table = pa.table({c: [r[j] for r in part] for j, c in enumerate(COLUMNS)})
        pq.write_table(table, shards / f"shard-{i:05d}.parquet")


def test_the_original_is_the_lowest_id_and_never_itself_a_duplicate(tmp_path: Path) -> None:
    rows: list[Row] = [
        ("140002", "train", "a.mp3", _digest("f1"), _digest("c1")),
        ("2", "test", "b.mp3", _digest("f1"), _digest("c1")),  # same file, lower id
        ("10", "val", "c.mp3", _digest("f2"), _digest("c1")),  # same clip, other file
        ("11", "train", "d.mp3", _digest("f2"), _digest("c1")),  # same file as a clip dup
        ("x-7", None, "e.mp3", _digest("f3"), _digest("c3")),
        ("x-10", "train", "f.mp3", _digest("f3"), _digest("c3")),  # text ids sort as text
        ("5", "train", "g.mp3", None, None),  # no digests: never a duplicate
        ("6", "train", "h.mp3", None, None),
    ]
    _write_shards(tmp_path, rows, per_shard=3)
    found = find_duplicates(str(tmp_path))
    assert sorted(found, key=lambda d: d.track_id) == sorted(
        _reference(rows), key=lambda d: d.track_id
    )
    originals = {d.track_id: d.original for d in found}
    assert originals == {"140002": "2", "10": "2", "11": "2", "x-7": "x-10"}
    assert not set(originals.values()) & set(originals)


def test_a_catalog_of_random_repeats_matches_the_plain_search(tmp_path: Path) -> None:
    rng = random.Random(7)
    rows: list[Row] = []
    clip_of = {f: f"c{rng.randrange(2400)}" for f in range(2600)}  # a file decodes one way
    for i in range(3000):
        file_number = rng.randrange(2600)
        file_label = f"f{file_number}"
        clip_label = clip_of[file_number]
        track_id = str(rng.randrange(10**6)) if rng.random() < 0.9 else f"id-{i}"
        split = rng.choice(["train", "val", "test"])
        rows.append((track_id, split, f"{i}.mp3", _digest(file_label), _digest(clip_label)))
    unique = list({r[0]: r for r in rows}.values())  # track ids are unique in a dataset
    _write_shards(tmp_path, unique, per_shard=128)
    found = find_duplicates(str(tmp_path))
    assert len(found) > 300
    assert sorted(found, key=lambda d: d.track_id) == sorted(
        _reference(unique), key=lambda d: d.track_id
    )
