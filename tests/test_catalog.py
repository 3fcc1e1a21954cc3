from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genreflow.catalog import (
    CATALOG_COLUMNS,
    CatalogOptions,
    assign_splits,
    clean_lyrics,
    fma_audio_path,
    read_catalog,
    read_manifest,
)
from genreflow.errors import CatalogError


def write_fma_metadata(meta: Path) -> None:
    """tracks.csv, genres.csv and echonest.csv in FMA's real header layout."""
    meta.mkdir(parents=True)
    ids = [2, 3, 5, 10, 20, 26, 30, 46]
    columns = pd.MultiIndex.from_tuples(
        [
            ("album", "title"),
            ("artist", "id"),
            ("artist", "name"),
            ("set", "split"),
            ("set", "subset"),
            ("track", "genre_top"),
            ("track", "title"),
        ]
    )
    data = [
        ["A", 1, "AWOL", "training", "small", "Hip-Hop", "Food"],
        ["A", 1, "AWOL", "training", "medium", "Hip-Hop", "Electric Ave"],
        ["A", 1, "AWOL", "test", "small", "Hip-Hop", "This World"],
        ["B", 6, "Kurt", "validation", "small", "Pop", "Freeway"],
        ["C", 4, "Nicky", "training", "large", "Rock", "Spiritual"],
        ["C", 4, "Nicky", "training", "medium", np.nan, "Untitled"],
        ["D", 9, "Bo", "test", "medium", "Rock", "Intro"],
        ["D", 9, "Bo", "training", "large", "Pop", "Outro"],
    ]
    tracks = pd.DataFrame(data, index=pd.Index(ids, name="track_id"), columns=columns)
    tracks.to_csv(meta / "tracks.csv")
    genres = pd.DataFrame(
        {
            "genre_id": [21, 10, 12],
            "#tracks": [8389, 13845, 32923],
            "parent": [0, 0, 0],
            "title": ["Hip-Hop", "Pop", "Rock"],
            "top_level": [21, 10, 12],
        }
    )
    genres.to_csv(meta / "genres.csv", index=False)
    echo_cols = pd.MultiIndex.from_tuples(
        [("echonest", "audio_features", "acousticness"), ("echonest", "audio_features", "valence")]
    )
    echonest = pd.DataFrame(
        [[0.4, 0.1], [0.3, 0.45], [0.2, 0.9]],
        index=pd.Index([2, 3, 10], name="track_id"),
        columns=echo_cols,
    )
    echonest.to_csv(meta / "echonest.csv")


def test_fma_header_layout_round_trips(tmp_path: Path) -> None:
    write_fma_metadata(tmp_path / "fma_metadata")
    raw = (tmp_path / "fma_metadata" / "tracks.csv").read_text().splitlines()
    assert raw[0].startswith(",album") and raw[2].startswith("track_id")  # FMA's real layout
    catalog = read_catalog(
        str(tmp_path / "fma_metadata"), CatalogOptions(audio_dir="/audio", fma_subset="medium")
    )
    t = catalog.tracks.set_index("track_id")
    assert list(catalog.tracks.columns) == CATALOG_COLUMNS
    # medium includes small; large-only tracks are left out, the one without genre_top kept
    assert sorted(t.index, key=int) == ["2", "3", "5", "10", "26", "30"]
    assert pd.isna(t.loc["26", "genre"])
    assert t.loc["2", "uri"] == "/audio/000/000002.mp3"
    assert t.loc["2", "genre"] == "Hip-Hop" and t.loc["2", "artist_id"] == "1"
    assert t.loc["5", "split"] == "test" and t.loc["10", "split"] == "val"
    assert t.loc["3", "valence"] == pytest.approx(0.45)
    assert np.isnan(t.loc["5", "valence"])
    assert "dropped_without_genre" not in catalog.notes


def test_fma_large_subset_and_our_own_split(tmp_path: Path) -> None:
    write_fma_metadata(tmp_path / "fma_metadata")
    catalog = read_catalog(
        str(tmp_path),
        CatalogOptions(audio_dir="/a", fma_subset="large", use_fma_split=False, seed=3),
    )
    assert len(catalog.tracks) == 8  # every track of the subset, genre_top or not
    assert set(catalog.tracks["split"]) <= {"train", "val", "test"}
    by_artist = catalog.tracks.groupby("artist_id")["split"].nunique()
    assert (by_artist == 1).all()


def test_fma_audio_path_layout() -> None:
    assert fma_audio_path("/x", 2) == "/x/000/000002.mp3"
    assert fma_audio_path("/x", 155066) == "/x/155/155066.mp3"


def test_manifest_columns_splits_and_problems(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "track_id,uri,genre,artist_id,split,valence,lyrics\n"
        "a,audio/a.mp3,rock,x,train,0.5,hello\n"
        "b,,rock,x,train,0.2,\n"
        "a,audio/a2.mp3,rock,x,train,0.1,\n"
        "c,/abs/c.ogg,jazz,y,test,1.7,\n"
        ",audio/d.mp3,jazz,y,val,0.3,\n"
    )
    catalog = read_manifest(manifest)
    t = catalog.tracks.set_index("track_id")
    assert sorted(t.index) == ["a", "c"]
    assert t.loc["a", "uri"] == str(tmp_path / "audio" / "a.mp3")  # relative to the manifest
    assert t.loc["a", "split"] == "train" and t.loc["c", "split"] == "test"  # honoured as is
    assert np.isnan(t.loc["c", "valence"]) and catalog.notes["valence_out_of_range"] == 1
    errors = dict(zip(catalog.problems["track_id"], catalog.problems["error"], strict=True))
    assert errors["b"] == "row without uri"
    assert errors["a"].startswith("duplicate track_id")
    assert errors[""] == "row without track_id"
    assert set(catalog.problems["stage"]) == {"catalog"}


def test_parquet_manifest_and_assigned_splits(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "track_id": [f"t{i}" for i in range(40)],
            "uri": [f"/m/{i}.mp3" for i in range(40)],
            "genre": ["a", "b"] * 20,
        }
    )
    df.to_parquet(tmp_path / "m.parquet")
    catalog = read_catalog(str(tmp_path / "m.parquet"))
    assert catalog.tracks["split"].value_counts().to_dict() == {"train": 32, "val": 4, "test": 4}


@pytest.mark.parametrize(
    "content,match",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "lacks required column|not a readable table"),
        (b"name,path\nx,y\n", r"lacks required column\(s\) \['track_id', 'uri'\]"),
        (b"track_id,uri,split\na,/x.mp3,holdout\n", "split values"),
    ],
)
def test_a_manifest_that_is_not_a_track_table_is_refused(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=match):
        read_catalog(str(path))


def test_unknown_manifest_format_and_missing_catalog(tmp_path: Path) -> None:
    (tmp_path / "x.mp3").write_bytes(b"ID3")
    with pytest.raises(
        CatalogError, match=r"is no catalog form genreflow reads.*manifest: a \.csv"
    ):
        read_catalog(str(tmp_path / "x.mp3"))
    with pytest.raises(CatalogError, match="unknown format"):
        read_catalog(str(tmp_path / "x.mp3"), CatalogOptions(form="manifest"))
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(str(tmp_path / "nope.csv"))


def test_untrusted_uris_are_refused_row_by_row(tmp_path: Path) -> None:
    root = tmp_path / "music"
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "track_id": ["ok", "ctl", "http", "escape", "s3"],
            "uri": [
                "music/a.mp3",
                "music/a\x07.mp3",
                "http://evil/x.mp3",
                "music/../../etc/passwd",
                "s3://b/k.mp3",
            ],
            "genre": ["g"] * 5,
        }
    ).to_csv(manifest, index=False)
    catalog = read_manifest(manifest, audio_root=str(root))
    assert sorted(catalog.tracks["track_id"]) == ["ok", "s3"]
    reasons = dict(zip(catalog.problems["track_id"], catalog.problems["error"], strict=True))
    assert "control characters" in reasons["ctl"]
    assert "scheme 'http'" in reasons["http"]
    assert "outside audio_root" in reasons["escape"]


def test_clean_lyrics() -> None:
    assert clean_lyrics(b"caf\xe9 \xff ok") == "caf\ufffd \ufffd ok"
    assert clean_lyrics("  \n ") is None
    assert clean_lyrics(None) is None and clean_lyrics(float("nan")) is None
    assert clean_lyrics("a\x00b\r\nc") == "a b\nc"
    assert len(clean_lyrics("x" * 100_000) or "") == 20_000


def test_folder_tree(tmp_path: Path) -> None:
    for genre in ("blues", "jazz"):
        for i in range(3):
            (tmp_path / genre).mkdir(exist_ok=True)
            (tmp_path / genre / f"{genre}.{i:05d}.wav").write_bytes(b"RIFF")
    (tmp_path / "jazz" / "notes.txt").write_text("not audio")
    catalog = read_catalog(str(tmp_path))
    assert sorted(catalog.tracks["track_id"])[:2] == ["blues/blues.00000", "blues/blues.00001"]
    assert len(catalog.tracks) == 6
    with pytest.raises(CatalogError, match="genre"):
        read_catalog(str(tmp_path / "jazz"))


def make_tracks(n_artists: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n_artists):
        genre = ["rock", "jazz", "pop", "folk"][a % 4] if a % 7 else "rare"
        for k in range(int(rng.integers(1, 8))):
            rows.append({"track_id": f"{a}-{k}", "genre": genre, "artist_id": f"artist{a}"})
    for k in range(30):  # tracks without an artist are their own group
        rows.append({"track_id": f"solo-{k}", "genre": "rock", "artist_id": None})
    return pd.DataFrame(rows)


def test_assign_splits_is_artist_disjoint_stratified_and_seeded() -> None:
    tracks = make_tracks()
    splits = assign_splits(tracks, seed=1)
    assert (tracks.assign(s=splits).groupby("artist_id")["s"].nunique() == 1).all()
    shares = splits.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.05)
    assert shares["val"] == pytest.approx(0.1, abs=0.05)
    for genre in ("rock", "jazz", "pop", "folk"):
        in_genre = splits[tracks["genre"] == genre].value_counts(normalize=True)
        assert in_genre["train"] == pytest.approx(0.8, abs=0.12), genre
    assert splits.equals(assign_splits(tracks, seed=1))
    assert not splits.equals(assign_splits(tracks, seed=2))


def test_assign_splits_rejects_bad_fractions() -> None:
    with pytest.raises(CatalogError, match="fractions"):
        assign_splits(make_tracks(), fractions=(0.5, 0.5, 0.5))


def test_bad_lyrics_and_valence_are_repaired_and_counted(tmp_path: Path) -> None:
    (tmp_path / "lyr").mkdir()
    (tmp_path / "lyr" / "ok.txt").write_text("from a file\nsecond line", encoding="utf-8")
    (tmp_path / "lyr" / "bad.txt").write_bytes(b"caf\xe9 \xff broken")
    long_text = "la " * 10_000
    rows = [
        ("a", "a.wav", "", "", 0.5),
        ("b", "b.wav", "   ", "", 1.7),  # blank lyrics; valence out of range
        ("c", "c.wav", long_text, "", -0.2),
        ("d", "d.wav", "", "lyr/ok.txt", 0.1),
        ("e", "e.wav", "", "lyr/bad.txt", None),
        ("f", "f.wav", "", "lyr/missing.txt", None),
        ("g", "g.wav", "", "../../etc/passwd", None),
    ]
    frame = pd.DataFrame(rows, columns=["track_id", "uri", "lyrics", "lyrics_uri", "valence"])
    frame = frame.replace("", None)
    path = tmp_path / "m.parquet"
    frame.to_parquet(path)
    catalog = read_manifest(path, audio_root=str(tmp_path))
    t = catalog.tracks.set_index("track_id")
    assert t.loc["d", "lyrics"] == "from a file\nsecond line"
    assert t.loc["e", "lyrics"].startswith("caf\ufffd")
    assert pd.isna(t.loc["b", "lyrics"]) and pd.isna(t.loc["f", "lyrics"])
    assert pd.isna(t.loc["g", "lyrics"])  # outside audio_root: never read
    assert len(t.loc["c", "lyrics"]) == 20_000
    assert catalog.notes["lyrics_invalid_utf8"] == 1
    assert catalog.notes["lyrics_empty"] == 1
    assert catalog.notes["lyrics_truncated"] == 1
    assert catalog.notes["lyrics_file_unreadable"] == 2
    assert catalog.notes["valence_out_of_range"] == 2
    assert np.isnan(t.loc["b", "valence"]) and t.loc["a", "valence"] == 0.5


def test_refused_rows_are_recorded_once_and_replaced_when_the_catalog_changes(
    tmp_path: Path,
) -> None:
    """A rerun on the same catalog records nothing new (rows without a track id
    included); a changed catalog's refused rows replace the earlier ones."""
    from genreflow.catalog import CatalogOptions, read_catalog
    from genreflow.ingest import write_catalog_problems

    def catalog(ids: list[str]) -> Path:
        path = tmp_path / "manifest.csv"
        uris = [str(tmp_path / f"{i}.wav") for i in range(len(ids))]
        pd.DataFrame({"track_id": ids, "uri": uris}).to_csv(path, index=False)
        return path

    def recorded() -> list[str]:
        files = sorted((tmp_path / "out" / "errors").glob("*.parquet"))
        return sorted(str(e) for f in files for e in pd.read_parquet(f)["error"])

    first = read_catalog(str(catalog(["a", "", "a"])), CatalogOptions())
    assert write_catalog_problems(str(tmp_path / "out"), first) == 2
    assert write_catalog_problems(str(tmp_path / "out"), first) == 0
    assert recorded() == ["duplicate track_id: kept the first row", "row without track_id"]
    changed = read_catalog(str(catalog(["a", "b", "b"])), CatalogOptions())
    assert write_catalog_problems(str(tmp_path / "out"), changed) == 1
    assert recorded() == ["duplicate track_id: kept the first row"]
