"""The index job on real labels: exact results, neighbours table, recommend, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genreflow import cli
from genreflow import index as fidx
from genreflow.analysis import AnalyzeConfig
from genreflow.config import load_config
from genreflow.errors import ConfigError, GenreflowError
from genreflow.formats import index as findex
from genreflow.formats.index import read_neighbours
from genreflow.formats.labels import label_files, read_labels
from genreflow.pipelines import index as index_pipeline
from genreflow.pipelines.analyze import run_analyze
from genreflow.pipelines.index import run_index
from tests.faults import GENREFLOW, kill_at, temporary_files

pytestmark = pytest.mark.usefixtures("ray_session")


def build(labels: Path, out: Path, *overrides: str) -> index_pipeline.IndexResult:
    return run_index(
        load_config(
            fidx.IndexConfig,
            overrides=["neighbours=4", "resources.batch_size=7", *overrides],
            labels=str(labels),
            out=str(out),
        )
    )


def expected_neighbours(frame: pd.DataFrame, k: int) -> dict[str, list[str]]:
    """Brute force over the signatures minus their mean, normalised (the default)."""
    vectors = np.stack(frame["embedding"].to_numpy())
    vectors = vectors - vectors.mean(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids = frame["track_id"].to_numpy()
    return {ids[i]: [ids[j] for j in order[i]] for i in range(len(ids))}


@pytest.mark.parametrize(
    "where",
    [
        "resources.neighbours_local_below=20000",
        "resources.neighbours_local_below=0 resources.neighbours_local_s=0",
    ],
    ids=["local", "ray"],
)
def test_index_and_neighbours_table_equal_exact_search(
    labels: Path, trained_checkpoint: str, tmp_path: Path, where: str
) -> None:
    """The neighbours table of a small catalog (in the job's process) and of a large one
    (a Ray Data actor pool) both equal a brute-force search."""
    result = build(labels, tmp_path / "index", *where.split())
    frame = read_labels(str(labels), ["track_id", "embedding", "model_version", "genre"])
    info = json.loads((tmp_path / "index" / "index.json").read_text())
    assert info["count"] == len(frame) == result.neighbour_rows
    assert info["index_type"] == "flat" and info["recall_at_10"] == 1.0
    assert info["metric"] == "inner_product" and info["dimension"] == len(frame["embedding"][0])
    assert info["model_version"] == frame["model_version"][0]
    assert info["checkpoint"] == trained_checkpoint and info["built_on"] == "CPU"
    folder = tmp_path / "index" / info["version"]
    assert {p.name for p in folder.iterdir()} >= {"index.faiss", "ids.parquet", "index.json"}

    expected = expected_neighbours(frame, 4)
    table = read_neighbours(str(tmp_path / "index")).to_pylist()
    assert sorted(r["track_id"] for r in table) == sorted(expected)
    for row in table:
        got = [n["track_id"] for n in row["neighbours"]]
        assert got == expected[row["track_id"]], row["track_id"]
        scores = [n["score"] for n in row["neighbours"]]
        assert scores == sorted(scores, reverse=True)

    loaded = findex.open_index(str(tmp_path / "index"))
    track = str(frame["track_id"][0])
    assert [r["track_id"] for r in loaded.recommend(track, 4)] == expected[track]


def test_recommend_command(
    labels: Path,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    build(labels, tmp_path / "index", "neighbours=0")
    frame = read_labels(str(labels), ["track_id", "embedding"])
    expected = expected_neighbours(frame, 3)
    track = str(frame["track_id"][2])
    assert cli.main(["recommend", "--index", str(tmp_path / "index"), "--track-id", track,
                     "-k", "3", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert [r["track_id"] for r in rows] == expected[track]
    assert set(rows[0]) == {"track_id", "score"}

    # a new audio file: the catalog file of a track is its own nearest neighbour
    shards = pd.read_parquet(dataset / "shards", columns=["track_id", "uri"])
    uri = str(shards.loc[shards["track_id"] == track, "uri"].iloc[0])
    assert cli.main(["recommend", "--index", str(tmp_path / "index"), "--audio", uri,
                     "-k", "2", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["track_id"] == track and rows[0]["score"] == pytest.approx(1.0, abs=1e-3)

    assert cli.main(["recommend", "--index", str(tmp_path / "index"), "--track-id", track]) == 0
    assert re.search(r"^\s+1\. \S+\s+\d\.\d{3}", capsys.readouterr().out, re.M)

    assert cli.main(["recommend", "--index", str(tmp_path / "index"), "--track-id", "x9"]) == 2
    assert "'x9' is not in the index" in caplog.text
    assert cli.main(["recommend", "--index", str(tmp_path / "none"), "--track-id", track]) == 2
    assert "no index in" in caplog.text


def _served(out: Path) -> tuple[str, list[str], dict[str, list[str]]]:
    """What readers of ``out`` get: the published version, its id map, its neighbours."""
    index = findex.open_index(str(out))
    table = read_neighbours(str(out)).to_pandas()
    neighbours = {row.track_id: list(row.neighbours) for row in table.itertuples()}
    return index.info["version"], index.track_ids.to_pylist(), neighbours


@pytest.mark.parametrize("point", ["index:version-written", "index:before-publish"])
def test_a_build_killed_before_publishing_leaves_the_previous_index_served(
    labels: Path, tmp_path: Path, point: str
) -> None:
    """SIGKILL of the index command after it wrote a new version (mid-build: before its
    neighbours table; or just before publishing): readers keep the previous index; the
    rerun publishes one equal to an uninterrupted build and removes the orphan."""
    out = tmp_path / "index"
    first = build(labels, out, "neighbours=3")
    before = _served(out)
    cmd = [*GENREFLOW, "index", "--labels", str(labels), "--out", str(out), "neighbours=4",
           "resources.batch_size=7"]  # fmt: skip
    assert kill_at(cmd, point, tmp_path / "stopped")
    assert len(findex.list_versions(str(out))) == 2  # the killed build's, unpublished
    assert _served(out) == before and before[0] == first.info["version"]
    assert not temporary_files(out)
    again = build(labels, out, "keep_versions=1")
    assert findex.list_versions(str(out)) == [again.info["version"]]  # the orphan is gone
    build(labels, tmp_path / "clean")
    assert _served(out)[1:] == _served(tmp_path / "clean")[1:]


def test_index_bad_input(labels: Path, tmp_path: Path) -> None:
    with pytest.raises(GenreflowError, match="no finished label runs"):
        build(tmp_path / "nothing", tmp_path / "index")
    with pytest.raises(GenreflowError, match="no label runs of model_version 'm-x'"):
        build(labels, tmp_path / "index", "model_version=m-x")
    if fidx.faiss_gpus() == 0:
        with pytest.raises(GenreflowError, match=r"resources\.device=gpu but FAISS sees no GPU"):
            build(labels, tmp_path / "index", "resources.device=gpu")


def test_analysis_report_renders_with_its_pictures(labels: Path, tmp_path: Path) -> None:
    result = run_analyze(
        load_config(
            AnalyzeConfig, overrides=["heatmap_tracks=1"], labels=str(labels), out=str(tmp_path)
        )
    )
    page = (tmp_path / "report.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert {"genre_pca_2d.png", "genre_pca_3d.png", "genre_similarity.png", "attention.png",
            "confusion.png"} <= set(sources)  # fmt: skip
    for name in sources:
        assert (tmp_path / name).stat().st_size > 1000  # a real PNG
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert data["grouped_by"] == "true genre"
    assert set(data["genres"]) == {"ambient", "electronic", "rock"} == set(result.genres)
    assert sum(data["genres"].values()) == result.tracks == 30
    for genre, near in data["nearest_genres"].items():
        assert len(near) == 2 and genre not in {n["genre"] for n in near}
        assert genre in page
    assert "needs 4 or more genres" in page  # three genres: no analogy is possible
    # accuracy and the confusion matrix count the test split's tracks, and only those
    rows = read_labels(str(labels), ["genre", "true_genre", "split"])
    test = rows[rows["split"] == "test"]
    assert 0 < data["test_tracks"] == len(test) < len(rows)
    assert data["accuracy"] == pytest.approx((test["genre"] == test["true_genre"]).mean())


def test_a_report_killed_before_its_page_is_rewritten_by_the_rerun(
    labels: Path, tmp_path: Path
) -> None:
    """SIGKILL of the analyze command after its pictures and analysis.json, before
    report.html (its completion marker): no page yet, no half-written file; the rerun's
    report equals an uninterrupted one."""
    out = tmp_path / "report"
    cmd = [*GENREFLOW, "analyze", "--labels", str(labels), "--out", str(out)]
    assert kill_at(cmd, "analyze:before-report", tmp_path / "stopped")
    assert (out / "analysis.json").exists() and not (out / "report.html").exists()
    assert not temporary_files(out)
    run_analyze(load_config(AnalyzeConfig, labels=str(labels), out=str(out)))
    run_analyze(load_config(AnalyzeConfig, labels=str(labels), out=str(tmp_path / "clean")))

    def report(folder: Path) -> dict[str, object]:
        data = json.loads((folder / "analysis.json").read_text())
        data.pop("created_at")
        data["pictures"] = sorted(data["pictures"])  # their names; the folders differ
        assert "</html>" in (folder / "report.html").read_text()
        return data

    assert report(out) == report(tmp_path / "clean")


def test_an_actor_pool_taking_every_cpu_is_refused(labels: Path, tmp_path: Path) -> None:
    # 2 CPUs: an actor holding both would leave the Parquet reads no CPU, and wait forever
    with pytest.raises(GenreflowError, match="leaving less than the 1 CPU"):
        build(
            labels,
            tmp_path / "index",
            "resources.cpus_per_actor=2",
            "resources.neighbours_local_below=0",
            "resources.neighbours_local_s=0",
        )


def test_the_build_task_writes_the_index_the_driver_would(labels: Path, tmp_path: Path) -> None:
    """On a cluster with GPUs the build runs as a Ray task (holding them): shipped to a
    worker, it writes the same index the job's own process writes."""
    import faiss
    import ray

    files, version, _ = label_files(str(labels), None)
    config = fidx.IndexConfig(labels=str(labels), out=str(tmp_path / "out"), tune_queries=5)
    request = {"files": files, "version": version, "out": config.out, "extra": {}, "config": config}
    here = index_pipeline.build_version(**request, name="v-here")
    task = ray.remote(num_cpus=1)(index_pipeline._build_in_task)
    there = ray.get(task.remote({**request, "name": "v-there"}))
    assert there["count"] == here["count"] == len(read_labels(str(labels), ["track_id"]))
    assert there["version"] == "v-there" and there["built_on"] == "CPU"
    indexes = [
        faiss.read_index(str(tmp_path / "out" / v / findex.INDEX_FILE))
        for v in ("v-here", "v-there")
    ]
    assert (
        faiss.serialize_index(indexes[0]).tobytes() == faiss.serialize_index(indexes[1]).tobytes()
    )


@pytest.mark.parametrize(
    "address,device,gpus,expected",
    [
        (None, "auto", (4.0, None), 0),  # a local run builds in its own process
        ("127.0.0.1:6379", "auto", (2.0, None), 3),  # a cluster with GPUs: a task on 3
        ("127.0.0.1:6379", "auto", (0.0, 8.0), 3),  # a GPU group at zero: the task scales it
        ("127.0.0.1:6379", "auto", (0.0, None), 0),  # a CPU cluster: the driver builds
        ("127.0.0.1:6379", "cpu", (2.0, None), 0),
        ("127.0.0.1:6379", "gpu", (0.0, None), "no GPU and its autoscaler can start none"),
    ],
)
def test_where_the_index_is_built(
    monkeypatch: pytest.MonkeyPatch,
    address: str | None,
    device: str,
    gpus: tuple[float, float | None],
    expected: int | str,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(index_pipeline, "init_ray", lambda *a, **k: None)  # already joined
    monkeypatch.setattr(index_pipeline, "cluster_gpus", lambda: gpus)
    config = fidx.IndexConfig(
        resources=fidx.IndexResources(address=address, device=device, gpus=3)  # type: ignore[arg-type]
    )
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            index_pipeline._build_task_gpus(config)
    else:
        assert index_pipeline._build_task_gpus(config) == expected
