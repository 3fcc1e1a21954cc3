"""`genreflow compare`: every model under one protocol, one table, failures reported."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from genreflow import cli
from genreflow.config import load_config
from genreflow.errors import ConfigError
from genreflow.pipelines import compare
from genreflow.pipelines.compare import TABLE_COLUMNS, CompareConfig, run_compare

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def test_compare_writes_every_models_row_and_reports_a_failure(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = compare._train
    seen: list[Any] = []

    def train(config: Any) -> Any:
        seen.append(config)
        if config.model == "baseline_cnn":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(config)

    monkeypatch.setattr(compare, "_train", train)
    config = load_config(
        CompareConfig,
        overrides=["train.epochs=1", "train.batch_size=8", "train.seed=3"],
        data=str(dataset),
        out=str(tmp_path),
        models=["baseline_cnn", "multitask_attention_cnn"],
    )
    result = run_compare(config)
    assert result.failed and "FAILED: baseline_cnn" in result.summary()
    # one protocol: the same data, budget and seed for every model, each in its own run
    assert {(c.data, c.epochs, c.batch_size, c.seed) for c in seen} == {(str(dataset), 1, 8, 3)}
    assert [c.model for c in seen] == config.models

    with open(tmp_path / "comparison.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert list(rows) == config.models and list(next(iter(rows.values()))) == TABLE_COLUMNS
    failed = rows["baseline_cnn"]
    assert failed["status"] == "failed" and "CUDA out of memory" in failed["error"]
    for name in ("multitask_attention_cnn",):
        row = rows[name]
        assert row["status"] == "ok"
        metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
        assert float(row["accuracy"]) == pytest.approx(metrics["test"]["accuracy"])
        assert float(row["macro_f1"]) == pytest.approx(metrics["test"]["macro_f1"])
        assert int(row["parameters"]) > 1000 and float(row["train_seconds"]) > 0
        assert (tmp_path / row["confusion_matrix"]).is_file()
    assert rows["multitask_attention_cnn"]["mood_accuracy"] != ""  # it has a mood head
    assert rows["baseline_cnn"]["accuracy"] == rows["baseline_cnn"]["parameters"] == ""
    table = (tmp_path / "comparison.md").read_text()
    assert table.count("\n| ") >= 3 and "| baseline_cnn | failed |" in table
    assert "1 epochs, batch 8" in table and "seed 3" in table

    # rerun into the same folder: the finished model is kept, the failed one trains now
    kept = (tmp_path / "runs" / "multitask_attention_cnn" / "metrics.json").read_text()
    seen.clear()
    monkeypatch.setattr(compare, "_train", lambda c: seen.append(c) or real_train(c))
    again = run_compare(config)
    assert [c.model for c in seen] == ["baseline_cnn"] and not again.failed
    assert (tmp_path / "runs" / "multitask_attention_cnn" / "metrics.json").read_text() == kept
    with open(tmp_path / "comparison.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert float(rows["multitask_attention_cnn"]["macro_f1"]) == pytest.approx(
        json.loads(kept)["test"]["macro_f1"]
    )
    # another protocol into the same folder is refused before anything trains
    seen.clear()
    with pytest.raises(ConfigError, match="epochs: 1 then, 2 now"):
        run_compare(dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2)))
    assert seen == []


def test_compare_refuses_bad_model_lists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        CompareConfig(models=["signature_attention", "resnet"])
    with pytest.raises(ConfigError, match="twice"):
        CompareConfig(models=["baseline_cnn", "baseline_cnn"])
    with pytest.raises(ConfigError, match="empty"):
        CompareConfig(models=[])
    assert cli.main(["compare", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--models", "signature_attention,nope"]) == 2  # fmt: skip
    assert "nope" in caplog.text
