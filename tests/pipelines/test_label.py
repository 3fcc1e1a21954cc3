"""Ray batch labelling against the in-process model; incremental runs; bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from genreflow import checkpoint as ckpt
from genreflow import cli
from genreflow.config import load_config
from genreflow.errors import ConfigError, SpecMismatchError
from genreflow.formats.dataset import tokens_numpy
from genreflow.formats.labels import RUN_FILE, complete_partitions, read_labels
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig, Labeller
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.resources import LabelResources
from tests.audio_fixtures import write_audio
from tests.faults import GENREFLOW, kill_at

pytestmark = pytest.mark.usefixtures("ray_session")


def label(checkpoint: str, source: Path, out: Path, *overrides: str) -> Any:
    return run_label(
        load_config(
            LabelConfig,
            overrides=list(overrides),
            checkpoint=checkpoint,
            input=str(source),
            out=str(out),
        )
    )


def test_labels_equal_the_in_process_model(
    trained_checkpoint: str, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genreflow import storage

    in_job: list[str] = []  # Parquet files this process writes (the workers write the rest)
    write = storage.write_parquet_atomic
    monkeypatch.setattr(
        storage, "write_parquet_atomic", lambda t, path: in_job.append(path) or write(t, path)
    )
    result = label(
        trained_checkpoint,
        dataset,
        tmp_path / "labels",
        "resources.batch_size=7",
        "resources.model_batch=3",  # each call of 7 tracks runs the model on 3 + 3 + 1
        "top_k=2",
        "resources.inflight_gb=0.001",  # below one block: the job still moves, a block at a time
    )
    labels = read_labels(str(tmp_path / "labels")).set_index("track_id")
    table = pq.read_table(dataset / "shards")
    ids = table.column("track_id").to_pylist()
    assert sorted(labels.index) == sorted(ids) and result.labelled == len(ids)
    loaded = ckpt.load_model(trained_checkpoint)
    with torch.no_grad():
        out = loaded.model(
            torch.from_numpy(tokens_numpy(table.column("tokens")).astype(np.float32))
        )
    probs = torch.softmax(out.genre_logits, 1).numpy()
    embedding = torch.nn.functional.normalize(out.embedding, dim=1).numpy()
    durations = table.column("duration_s").to_numpy()
    spec = loaded.spec
    for i, track in enumerate(ids):
        row = labels.loc[track]
        assert row["genre"] == loaded.genres[int(probs[i].argmax())]
        assert row["genre_prob"] == pytest.approx(probs[i].max(), abs=1e-5)
        assert row["genre_topk"][0]["genre"] == row["genre"]
        assert len(row["genre_topk"]) == 2
        np.testing.assert_allclose(row["embedding"], embedding[i], atol=1e-5)
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
        weights = np.asarray(row["token_weights"])
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
        moments = list(row["signature_moments"])
        assert len(moments) == 3
        best = spec.token_times_s()[int(weights.argmax())]
        assert moments[0]["start_s"] == pytest.approx(best[0], abs=1e-3)
        assert [m["weight"] for m in moments] == sorted(
            (m["weight"] for m in moments), reverse=True
        )
        for m in moments:
            assert 0 <= m["start_s"] < m["end_s"] <= min(durations[i], spec.clip_s) + 1e-3
        assert row["model_version"] == loaded.version
    record = json.loads(next((tmp_path / "labels").glob(f"run-*/{RUN_FILE}")).read_text())
    assert record["labelled"] == len(ids) and record["model_version"] == loaded.version
    # the label files were written by the workers that made the rows, not by the job
    files = list((tmp_path / "labels").glob("run-*/labels-*.parquet"))
    assert files and not [p for p in in_job if "/labels-" in p]


def test_a_cpu_labeller_runs_on_the_threads_it_is_given(trained_checkpoint: str) -> None:
    before = torch.get_num_threads()
    try:
        labeller = Labeller(trained_checkpoint, top_k=1, moments=1, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in labeller.model.modules())
        assert labeller.model_batch == 8  # forward passes of 8 tracks on a CPU
        assert Labeller(trained_checkpoint, top_k=1, moments=1, model_batch=5).model_batch == 5
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="torch_threads"):
        LabelResources(torch_threads=0)
    with pytest.raises(ConfigError, match="model_batch"):
        LabelResources(model_batch=0)


def test_a_pool_asking_for_missing_gpus_is_refused_before_it_starts(
    trained_checkpoint: str, dataset: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"the cluster has 0; set resources\.gpus_per_actor=0"):
        label(trained_checkpoint, dataset, tmp_path / "labels", "resources.gpus_per_actor=1")
    assert not list((tmp_path / "labels").glob("run-*/*.parquet"))


def write_catalog(tmp_path: Path, dataset_manifest: Path, n: int) -> Path:
    rows = pd.read_csv(dataset_manifest).head(n)
    rows["uri"] = [str(dataset_manifest.parent / u) for u in rows["uri"]]
    path = tmp_path / "catalog.csv"
    rows.to_csv(path, index=False)
    return path


def test_incremental_runs_label_only_new_tracks_exactly_once(
    trained_checkpoint: str, dataset: Path, tmp_path: Path
) -> None:
    source = dataset.parent / "catalog" / "manifest.csv"
    out = tmp_path / "labels"
    catalog = write_catalog(tmp_path, source, 12)
    first = label(trained_checkpoint, catalog, out, "incremental=true")
    assert first.labelled == 12 and first.skipped == 0
    again = label(trained_checkpoint, catalog, out, "incremental=true")
    assert again.labelled == 0 and again.skipped == 12  # same model version: zero work
    assert again.partition == "" and len(complete_partitions(str(out))) == 1  # nothing written
    grown = write_catalog(tmp_path, source, 18)
    third = label(trained_checkpoint, grown, out, "incremental=true")
    assert third.labelled == 6 and third.skipped == 12
    # an interrupted run: its partition has rows but no run record
    partial = out / "run-29991231T000000-dead00"
    shutil.copytree(Path(third.partition), partial)
    (partial / RUN_FILE).unlink()
    grown = write_catalog(tmp_path, source, 20)
    fourth = label(trained_checkpoint, grown, out, "incremental=true")
    assert not partial.exists()
    assert fourth.labelled == 2
    labels = read_labels(str(out))
    assert labels["track_id"].is_unique and len(labels) == 20
    assert len(complete_partitions(str(out))) == 3  # the night with nothing new added none
    # past compact_after finished partitions, a night merges all but the largest
    fifth = label(trained_checkpoint, write_catalog(tmp_path, source, 22), out,
                  "incremental=true", "compact_after=2")  # fmt: skip
    assert fifth.labelled == 2
    assert len(complete_partitions(str(out))) == 2 and len(list(out.glob("run-*"))) == 2
    labels = read_labels(str(out))
    assert labels["track_id"].is_unique and len(labels) == 22


def test_bad_audio_becomes_error_rows(
    trained_checkpoint: str, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = dataset.parent / "catalog" / "manifest.csv"
    good = pd.read_csv(source).head(3)
    good["uri"] = [str(source.parent / u) for u in good["uri"]]
    audio = tmp_path / "bad"
    audio.mkdir()
    (audio / "corrupt.mp3").write_bytes(b"\xff\xfb" + bytes(500))
    write_audio(audio / "silent.wav", np.zeros((22050 * 2, 1), np.float32), 22050)
    write_audio(audio / "short.wav", np.ones((5000, 1), np.float32) * 0.1, 22050)
    bad = pd.DataFrame(
        {
            "track_id": ["corrupt", "silent", "short", "missing"],
            "uri": [
                str(audio / n) for n in ("corrupt.mp3", "silent.wav", "short.wav", "missing.ogg")
            ],
        }
    )
    repeated = good.head(1).assign(uri=str(audio / "corrupt.mp3"))  # refused by the catalog
    catalog = tmp_path / "catalog.csv"
    pd.concat([good, bad, repeated]).to_csv(catalog, index=False)
    config = load_config(
        LabelConfig,
        overrides=["max_error_rate=0.9", "resources.cpus_per_actor=1"],
        checkpoint=trained_checkpoint,
        input=str(catalog),
        out=str(tmp_path / "labels"),
    )
    before = repr(config)
    with caplog.at_level(logging.INFO, logger="genreflow.pipelines.label"):
        result = run_label(config)
    assert result.labelled == 3 and result.errors == 5 and not result.failed
    # the plan is one log line and the run record's; the config stays as the user gave it
    assert repr(config) == before and config.resources.actors is None
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("label plan")]
    assert "7 tracks from audio" in line and "1 CPU" in line
    record = json.loads((Path(result.partition) / RUN_FILE).read_text())
    assert record["plan"]["source"] == "audio" and record["plan"]["cpus_per_actor"] == 1
    assert record["plan"]["actors"] == 1 and record["checkpoint"] == trained_checkpoint
    errors = pq.read_table(Path(result.partition) / "errors").to_pandas()
    assert sorted(zip(errors["track_id"], errors["kind"], strict=True)) == sorted([
        ("corrupt", "undecodable"),
        ("silent", "silent"),
        ("short", "too_short"),
        ("missing", "missing"),
        (str(good["track_id"].iloc[0]), "duplicate_track_id"),
    ])  # fmt: skip
    assert [p.name for p in (Path(result.partition) / "errors").iterdir() if p.is_dir()] == []
    # cut before its record and its label file: the continued run labels the three again,
    # the first row of the repeated id among them (its refused copy is no outcome of it)
    (Path(result.partition) / RUN_FILE).unlink()
    for f in Path(result.partition).glob("labels-*.parquet"):
        f.unlink()
    again = run_label(config)
    assert again.partition == result.partition
    assert again.labelled == 3 and again.errors == 5 and again.skipped == 0
    assert read_labels(str(tmp_path / "labels"))["track_id"].is_unique


def test_a_checkpoint_of_another_token_spec_is_refused(
    trained_checkpoint: str, small_manifest: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    run_ingest(
        load_config(IngestConfig, catalog=str(small_manifest), out=str(other))
    )  # default spec
    with pytest.raises(SpecMismatchError, match=r"checkpoint .* differs from shards"):
        label(trained_checkpoint, other, tmp_path / "labels")


def test_a_new_model_version_relabels_everything(
    trained_run: Path, dataset: Path, tmp_path: Path
) -> None:
    root = trained_run / "checkpoints" / "run"
    checkpoints = sorted(str(p) for p in root.glob("checkpoint_*") if p.is_dir())
    versions = {ckpt.load_model(c).version for c in checkpoints}
    assert len(checkpoints) == 2 and len(versions) == 2  # epochs 0 and 1: different weights
    catalog = write_catalog(tmp_path, dataset.parent / "catalog" / "manifest.csv", 6)
    out = tmp_path / "labels"
    first = label(checkpoints[0], catalog, out, "incremental=true")
    second = label(checkpoints[1], catalog, out, "incremental=true")
    assert first.labelled == second.labelled == 6 and second.skipped == 0
    labels = read_labels(str(out))
    assert labels.groupby("model_version")["track_id"].nunique().to_dict() == {
        v: 6 for v in versions
    }


def test_a_label_run_killed_mid_write_continues_keeping_its_finished_files(
    trained_checkpoint: str, dataset: Path, labels: Path, tmp_path: Path
) -> None:
    """SIGKILL of the label command once its first file is written, then the same
    command again: the same partition is finished, the killed run's files are kept as
    they were, every track is labelled exactly once, and the rows are an uninterrupted
    run's."""
    out = tmp_path / "labels"
    cmd = [
        *GENREFLOW, "label", "--checkpoint", trained_checkpoint, "--input", str(dataset),
        "--out", str(out), "rows_per_file=4", "resources.batch_size=4",
    ]  # fmt: skip
    assert kill_at(cmd, "labels:file-written", tmp_path / "stopped")  # once a file is whole
    (partition,) = out.glob("run-*")
    assert not (partition / RUN_FILE).exists()  # nothing claims to be finished
    before = {p.name: p.read_bytes() for p in sorted(partition.glob("labels-*.parquet"))}
    assert cli.main(cmd[len(GENREFLOW) :]) == 0  # the same command again (in this process)
    assert [p.name for p in out.glob("run-*")] == [partition.name]  # continued, not restarted
    assert {name: (partition / name).read_bytes() for name in before} == before
    record = json.loads((partition / RUN_FILE).read_text())
    kept = sum(pq.read_metadata(partition / name).num_rows for name in before)
    # a killed job's write tasks may finish a file after it died: the rerun keeps those
    # it found, labels the rest, and every track is labelled once
    assert record["continued"] >= kept > 0
    got = read_labels(str(out)).set_index("track_id").sort_index()
    clean = read_labels(str(labels)).set_index("track_id").sort_index()
    assert got.index.is_unique and list(got.index) == list(clean.index)
    assert (got["genre"] == clean["genre"]).all()
    np.testing.assert_allclose(
        np.stack(got["embedding"].to_numpy()), np.stack(clean["embedding"].to_numpy()), atol=1e-4
    )
