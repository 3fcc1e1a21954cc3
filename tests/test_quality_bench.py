"""bench/quality.py's album-disjoint folds: every album is tested once, never on two sides
of a split, and every fold holds every genre that has enough albums."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def catalog(albums_per_genre: dict[str, int]) -> pd.DataFrame:
    rows = []
    for genre, count in albums_per_genre.items():
        for a in range(count):
            album = f"{genre}-{a}"
            rows += [
                {"track_id": f"{album}-{t}", "genre": genre, "album": album, "split": "train"}
                for t in range(3 + a)
            ]
    return pd.DataFrame(rows)


def test_folds_are_album_disjoint_and_test_every_album_once(quality: ModuleType) -> None:
    c = catalog({"orchestral": 4, "electronic": 5, "pop": 4})
    folds = quality.album_folds(c, "album", 4)
    assert len(folds) == 4
    tested: list[str] = []
    for i, split in enumerate(folds):
        assert set(split) == {"train", "val", "test"}
        per_album = c.assign(split=split).groupby("album")["split"].nunique()
        assert (per_album == 1).all()  # no album on two sides
        test_albums = set(c.loc[split == "test", "album"])
        val_albums = set(c.loc[split == "val", "album"])
        assert val_albums == set(c.loc[folds[(i + 1) % 4] == "test", "album"])
        assert len(test_albums) in (3, 4)  # 13 albums dealt to 4 folds
        # every genre has at least 4 albums, so every test and val fold holds each one
        assert set(c.loc[split == "test", "genre"]) == {"orchestral", "electronic", "pop"}
        assert set(c.loc[split == "val", "genre"]) == {"orchestral", "electronic", "pop"}
        tested += sorted(test_albums)
    assert sorted(tested) == sorted(set(c["album"]))


def test_folds_are_seeded(quality: ModuleType) -> None:
    c = catalog({"orchestral": 4, "electronic": 5, "pop": 4})
    same = [s.tolist() for s in quality.album_folds(c, "album", 3, seed=1)]
    assert same == [s.tolist() for s in quality.album_folds(c, "album", 3, seed=1)]
    other = [s.tolist() for s in quality.album_folds(c, "album", 3, seed=2)]
    assert other != same


def test_folds_refuse_what_cannot_split(quality: ModuleType) -> None:
    c = catalog({"orchestral": 2, "pop": 2})
    with pytest.raises(SystemExit, match="at least 3"):
        quality.album_folds(c, "album", 2)
    with pytest.raises(SystemExit, match="only 4 albums"):
        quality.album_folds(c, "album", 5)


def test_summary_is_mean_and_spread_over_folds(quality: ModuleType) -> None:
    def row(f1: float, p5: float, epoch: int) -> dict[str, object]:
        return {"run": "r", "macro_f1": f1, "accuracy": f1, "p_at_5": p5, "best_epoch": epoch}

    (summary,) = quality.summarise([[row(0.5, 0.4, 3)], [row(0.7, 0.6, 5)]])
    assert summary["macro_f1"] == pytest.approx(0.6)
    assert summary["macro_f1_sd"] == pytest.approx(0.1414, abs=1e-4)  # sample sd
    assert summary["p_at_5_folds"] == [0.4, 0.6]
    assert summary["best_epoch"] == "3/5"
    assert quality.cell(summary, "p_at_5") == "0.500 ± 0.141"
