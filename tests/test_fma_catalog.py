"""FMA as it ships: 52 columns under two header rows, genres_all over genres.csv's
hierarchy, nested subsets, every track kept whatever its labels."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from genreflow.catalog import CatalogOptions, fma_audio_path, read_catalog, read_manifest
from tests.fma_fixture import FAULTS, TRACK_COLUMNS, write_fma


@pytest.fixture(scope="module")
def fma(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return write_fma(tmp_path_factory.mktemp("fma"), n_tracks=60, audio=False)


def test_fixture_reads_as_fmas_own_utils_load_reads_tracks_csv(fma) -> None:  # type: ignore[no-untyped-def]
    # what mdeff/fma's utils.load does with tracks.csv
    tracks = pd.read_csv(fma.metadata / "tracks.csv", index_col=0, header=[0, 1])
    assert list(tracks.columns) == TRACK_COLUMNS and len(tracks.columns) == 52
    for column in [("track", "tags"), ("album", "tags"), ("artist", "tags"),
                   ("track", "genres"), ("track", "genres_all")]:  # fmt: skip
        tracks[column] = tracks[column].map(ast.literal_eval)
    tracks[("track", "date_created")] = pd.to_datetime(tracks[("track", "date_created")])
    subsets = pd.CategoricalDtype(categories=("small", "medium", "large"), ordered=True)
    tracks[("set", "subset")] = tracks[("set", "subset")].astype(subsets)
    assert tracks[("track", "genre_top")].isna().any()  # FMA: many tracks have none
    genres = pd.read_csv(fma.metadata / "genres.csv", index_col=0)
    assert list(genres.columns) == ["#tracks", "parent", "title", "top_level"]
    assert (genres["parent"] > 0).any() and (genres["parent"] == 0).any()
    echonest = pd.read_csv(fma.metadata / "echonest.csv", index_col=0, header=[0, 1, 2])
    assert 0 < len(echonest) < len(tracks)


@pytest.mark.parametrize("subset", ["small", "medium", "large", "full"])
def test_every_track_of_the_subset_is_a_row(fma, subset: str) -> None:  # type: ignore[no-untyped-def]
    catalog = read_catalog(str(fma.root), CatalogOptions(fma_subset=subset, audio_dir="/audio"))
    ids = sorted(int(t) for t in catalog.tracks["track_id"])
    assert ids == sorted(fma.subsets[subset])
    assert catalog.tracks["genre"].isna().any()  # kept without genre_top
    counts = catalog.target_counts()
    assert sum(counts.values()) == len(ids) and counts["multi_only"] > 0 and counts["none"] > 0


def test_subsets_nest_and_full_defaults_to_fma_full(fma) -> None:  # type: ignore[no-untyped-def]
    small, medium, large = (set(fma.subsets[s]) for s in ("small", "medium", "large"))
    assert small < medium < large
    full = read_catalog(str(fma.root), CatalogOptions(fma_subset="full"))
    assert full.tracks["uri"].iloc[0] == fma_audio_path(
        fma.root / "fma_full", int(full.tracks["track_id"].iloc[0])
    )


def test_genres_are_genres_all_closed_under_the_hierarchy(fma) -> None:  # type: ignore[no-untyped-def]
    catalog = read_catalog(str(fma.root), CatalogOptions(fma_subset="large", audio_dir="/audio"))
    tax = catalog.taxonomy
    assert tax is not None and len(tax.titles) == 28
    truth = fma.tracks.set_index("track_id")
    for tid, genres, top in catalog.tracks[["track_id", "genres", "genre"]].itertuples(index=False):
        expected = truth.loc[int(tid), "genres_all_titles"]
        assert (genres or []) == tax.close(expected)
        for g in genres or []:  # no child without its parent
            assert tax.parent(g) is None or tax.parent(g) in genres
        if isinstance(top, str):  # genre_top is the one root of its genres
            assert [g for g in genres if tax.parent(g) is None] == [top]


def test_bogus_bit_rate_is_only_metadata(fma) -> None:  # type: ignore[no-untyped-def]
    catalog = read_catalog(str(fma.root), CatalogOptions(fma_subset="large", audio_dir="/audio"))
    assert str(FAULTS["bogus_bit_rate"][0]) in set(catalog.tracks["track_id"])
    declared = catalog.tracks.set_index("track_id")["declared_duration_s"]
    assert declared[str(FAULTS["cut_past_end"][0])] == 300


def test_require_genre_still_drops_on_request(fma) -> None:  # type: ignore[no-untyped-def]
    kept = read_catalog(str(fma.root), CatalogOptions(fma_subset="large", audio_dir="/a"))
    dropped = read_catalog(
        str(fma.root), CatalogOptions(fma_subset="large", audio_dir="/a", require_genre=True)
    )
    assert dropped.notes["dropped_without_genre"] == int(kept.tracks["genre"].isna().sum())
    assert dropped.tracks["genre"].notna().all()


def test_a_manifest_carries_genre_lists(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "track_id": ["a", "b", "c"],
            "uri": ["a.mp3", "b.mp3", "c.mp3"],
            "genres": ["rock|punk", "", "jazz"],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    catalog = read_manifest(tmp_path / "m.csv")
    assert list(catalog.tracks["genres"]) == [["rock", "punk"], None, ["jazz"]]
    assert catalog.taxonomy is not None and catalog.taxonomy.titles == ("jazz", "punk", "rock")
    pd.DataFrame({"track_id": ["a"], "uri": ["a.mp3"], "genres": [["rock", "indie"]]}).to_parquet(
        tmp_path / "m.parquet"
    )
    assert list(read_manifest(tmp_path / "m.parquet").tracks["genres"]) == [["rock", "indie"]]
