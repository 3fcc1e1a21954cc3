"""Exit codes, stage by stage, through the job scripts' entry (``jobs/<stage>.py``):
0 done, 1 the stage ran and failed, 2 nothing ran."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from genreflow.analysis import AnalyzeConfig
from genreflow.entry import EXIT_FAILED, EXIT_NOTHING_RAN, EXIT_OK
from genreflow.index import IndexConfig
from genreflow.ingest import IngestConfig
from genreflow.jobscript import run_job
from genreflow.label import LabelConfig
from genreflow.pipelines import compare
from genreflow.pipelines.analyze import run_analyze
from genreflow.pipelines.compare import CompareConfig, run_compare
from genreflow.pipelines.index import run_index
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.pipelines.train import CRASH_AFTER_EPOCH_ENV, run_train
from genreflow.stages import STAGES
from genreflow.train import TrainConfig
from tests.audio_fixtures import write_tone

pytestmark = pytest.mark.usefixtures("ray_session")


REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    IngestConfig: "ingest", TrainConfig: "train", LabelConfig: "label", IndexConfig: "index",
    AnalyzeConfig: "analyze", CompareConfig: "compare",
}  # fmt: skip


def job(config_cls: type, run: Callable[[Any], Any], *overrides: str) -> int:
    """What ``python jobs/<stage>.py --config configs/<stage>.yaml ...`` returns (the
    registered stage, whose config and runner must be ``config_cls`` and ``run``)."""
    name = SHIPPED[config_cls]
    stage = STAGES[name]
    assert stage.config_class is config_cls and stage._load(stage.runner) is run
    config = REPO / "configs" / f"{name}.yaml"
    return run_job(name, "test", ["--config", str(config), *overrides])


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A regular file: a folder below it cannot be written."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def bad_audio_manifest(root: Path) -> Path:
    """Three tracks, two of them not audio: above the default max_error_rate."""
    rows = [{"track_id": "good", "uri": str(write_tone(root / "good.wav", 440.0, duration_s=3.0))}]
    for name in ("bad1", "bad2"):
        (root / f"{name}.mp3").write_bytes(b"no audio in here")
        rows.append({"track_id": name, "uri": str(root / f"{name}.mp3")})
    manifest = root / "manifest.csv"
    pd.DataFrame([{**r, "genre": "x", "artist_id": r["track_id"]} for r in rows]).to_csv(
        manifest, index=False
    )
    return manifest


def test_ingest(tmp_path: Path, small_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = job(IngestConfig, run_ingest, f"catalog={small_manifest}", f"out={tmp_path / 'ok'}")
    assert ok == EXIT_OK
    summary = capsys.readouterr().out
    assert "8 rows written" in summary and "clips/s" in summary
    assert json.loads((tmp_path / "ok" / "_dataset.json").read_text())["counts"]["rows"] == 8
    missing = f"catalog={tmp_path / 'none.csv'}"
    assert job(IngestConfig, run_ingest, missing, f"out={tmp_path / 'o'}") == EXIT_NOTHING_RAN
    manifest = bad_audio_manifest(tmp_path)
    ran = job(IngestConfig, run_ingest, f"catalog={manifest}", f"out={tmp_path / 'd'}")
    assert ran == EXIT_FAILED  # it ran: the good track is written, the bad ones are error rows
    assert json.loads((tmp_path / "d" / "_dataset.json").read_text())["counts"]["rows"] == 1


def test_train(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"data={tmp_path / 'none'}"
    assert job(TrainConfig, run_train, missing, f"out={tmp_path / 'o'}") == EXIT_NOTHING_RAN
    # a worker dies after its first epoch and no recovery is allowed: the run had begun
    monkeypatch.setenv(CRASH_AFTER_EPOCH_ENV, "0")
    died = job(
        TrainConfig, run_train, f"data={dataset}", f"out={tmp_path / 'run'}", "epochs=2",
        "batch_size=8", "resources.max_failures=0",
    )  # fmt: skip
    assert died == EXIT_FAILED
    assert list((tmp_path / "run" / "epochs").glob("epoch-*.json"))  # work was done


def test_label(trained_checkpoint: str, tmp_path: Path) -> None:
    run = Path(trained_checkpoint).parents[2]  # a run folder names its best checkpoint
    none = f"checkpoint={tmp_path / 'none'}"
    assert job(LabelConfig, run_label, none, "input=x", f"out={tmp_path}") == EXIT_NOTHING_RAN
    manifest = bad_audio_manifest(tmp_path)
    ran = job(
        LabelConfig, run_label, f"checkpoint={run}", f"input={manifest}",
        f"out={tmp_path / 'labels'}",
    )  # fmt: skip
    assert ran == EXIT_FAILED  # two of three tracks are error rows: over max_error_rate
    assert list((tmp_path / "labels").glob("run-*/_run.json"))


def test_index(labels: Path, tmp_path: Path, a_file: Path) -> None:
    empty = f"labels={tmp_path}"
    assert job(IndexConfig, run_index, empty, f"out={tmp_path / 'i'}") == EXIT_NOTHING_RAN
    ran = job(IndexConfig, run_index, f"labels={labels}", f"out={a_file / 'index'}")
    assert ran == EXIT_FAILED  # built, then could not be written
    assert job(IndexConfig, run_index, f"labels={labels}", f"out={tmp_path / 'i'}") == EXIT_OK


def test_analyze(labels: Path, tmp_path: Path, a_file: Path) -> None:
    empty = f"labels={tmp_path}"
    assert job(AnalyzeConfig, run_analyze, empty, f"out={tmp_path / 'r'}") == EXIT_NOTHING_RAN
    ran = job(AnalyzeConfig, run_analyze, f"labels={labels}", f"out={a_file / 'report'}")
    assert ran == EXIT_FAILED


def test_compare(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = job(CompareConfig, run_compare, f"data={dataset}", "models=[nope]", f"out={tmp_path}")
    assert bad == EXIT_NOTHING_RAN

    def train(config: Any) -> Any:
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(compare, "_train", train)
    ran = job(
        CompareConfig, run_compare, f"data={dataset}", "models=[baseline_cnn]",
        f"out={tmp_path / 'c'}",
    )  # fmt: skip
    assert ran == EXIT_FAILED
    assert "| baseline_cnn | failed |" in (tmp_path / "c" / "comparison.md").read_text()
