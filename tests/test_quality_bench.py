"""bench/quality.py's album-disjoint folds: every album is tested once, never on two sides
of a split, and every fold holds every genre that has enough albums."""

from __future__ import annotations

import hashlib
import importlib.util
import json
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

    made = [dict(row(0.5, 0.4, 3), commit="aaa", manifest_sha1="1", finished="t1")]
    made.append(dict(row(0.7, 0.6, 5), commit="bbb+", manifest_sha1="2", finished="t2"))
    (summary,) = quality.summarise([[made[0]], [made[1]]])
    assert summary["commit"] == "aaa,bbb+"  # every fold's commit, not the first one's
    assert "manifest_sha1" not in summary and "finished" not in summary


class Ran(Exception):
    """Raised by the stand-in for a genreflow command: the run was not reused."""


def test_finished_runs_are_reused_only_for_the_same_manifest(
    quality: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def command(*args: str, log: Path) -> None:
        raise Ran(args[0])

    monkeypatch.setattr(quality, "genreflow", command)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("track_id,uri,genre,album,split\na,a.ogg,pop,x,train\n")
    work = tmp_path / "work"
    extra = ["epochs=3"]
    stored = work / "rows" / f"{quality.run_tag('recommended', extra)}.json"
    stored.parent.mkdir(parents=True)
    row = {
        "run": quality.run_tag("recommended", extra),
        "macro_f1": 0.5,
        **quality.run_inputs(manifest, quality.RUNS["recommended"][1]),
        "commit": "abc1234",
    }
    assert row["manifest_sha1"] == hashlib.sha1(manifest.read_bytes()).hexdigest()
    assert (
        row["config_sha1"]
        == hashlib.sha1((ROOT / "configs" / "train-musicnn.yaml").read_bytes()).hexdigest()
    )
    stored.write_text(json.dumps(row))

    assert quality.genreflow_run("recommended", manifest, work, extra, {}, reuse=True) == row
    with pytest.raises(Ran, match="ingest"):  # asked to run afresh
        quality.genreflow_run("recommended", manifest, work, extra, {})
    assert not stored.exists()  # a run that starts again drops the old row first
    stored.write_text(json.dumps(row))
    with pytest.raises(Ran, match="ingest"):  # other --set overrides: another run
        quality.genreflow_run("recommended", manifest, work, ["epochs=4"], {}, reuse=True)
    stored.write_text(json.dumps({**row, "config_sha1": "of an earlier config file"}))
    with pytest.raises(Ran, match="ingest"):  # the config file changed since
        quality.genreflow_run("recommended", manifest, work, extra, {}, reuse=True)
    stored.write_text(json.dumps(row))
    manifest.write_text("track_id,uri,genre,album,split\na,a.ogg,pop,x,test\n")
    with pytest.raises(Ran, match="ingest"):  # the same run of another manifest
        quality.genreflow_run("recommended", manifest, work, extra, {}, reuse=True)
