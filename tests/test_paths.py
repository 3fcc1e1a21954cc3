"""Paths as users type them become absolute once, where a config is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from genreflow import storage
from genreflow.analysis import AnalyzeConfig
from genreflow.catalog import CatalogOptions, read_catalog
from genreflow.config import PATH_METADATA, load_config
from genreflow.errors import ConfigError
from genreflow.index import IndexConfig
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.paths import RAY_JOB_ENV, resolve_path
from genreflow.pipelines.compare import CompareConfig
from genreflow.train import TrainConfig
from tests.audio_fixtures import write_tone

CONFIGS = [IngestConfig, TrainConfig, LabelConfig, IndexConfig, AnalyzeConfig, CompareConfig]


def test_relative_home_and_file_uris_become_absolute(tmp_path: Path) -> None:
    def resolve(value: str) -> str:
        return resolve_path(value, role="output", key="out", cwd=str(tmp_path), environ={})

    assert resolve("out/dataset") == str(tmp_path / "out" / "dataset")
    assert resolve("./a/../b") == str(tmp_path / "b")
    assert resolve("~/x") == os.path.expanduser("~/x")
    assert resolve("file:///data/my%20music/é") == "/data/my music/é"
    assert resolve("file://localhost/data/x") == "/data/x"
    assert resolve("dossier à moi/sortie") == str(tmp_path / "dossier à moi" / "sortie")
    for remote in ("s3://bucket/prefix", "gs://b/p", "hdfs://nn:8020/x"):
        assert resolve(remote) == remote
    assert resolve("") == ""  # not set: the stage says it is missing
    with pytest.raises(ConfigError, match="must be local"):
        resolve("file://otherhost/data/x")


def test_every_stage_config_resolves_its_path_keys_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("out: from-yaml\n")
    for cls in CONFIGS:
        keys = [f for f, v in cls.__dataclass_fields__.items() if v.metadata.get(PATH_METADATA)]
        assert "out" in keys, cls  # every stage writes somewhere
        # YAML, then a CLI flag, then a key=value override: each relative value resolves
        assert load_config(cls, yaml_file).out == str(tmp_path / "from-yaml")
        assert load_config(cls, yaml_file, out="flag").out == str(tmp_path / "flag")
        for key in keys:
            config = load_config(cls, yaml_file, [f"{key}=rel/{key}"])
            assert getattr(config, key) == str(tmp_path / "rel" / key), (cls, key)
    nested = load_config(CompareConfig, overrides=["train.storage_path=ckpt"])
    assert nested.train.storage_path == str(tmp_path / "ckpt")


def test_under_ray_job_submit_relative_outputs_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    with pytest.raises(ConfigError, match=r"out='runs/x' is a relative path.*s3://"):
        load_config(TrainConfig, overrides=["out=runs/x"])
    # an input uploaded with --working-dir is read from the job's copy of it
    (tmp_path / "catalog.csv").write_text("track_id,uri\n")
    config = load_config(IngestConfig, overrides=["catalog=catalog.csv", "out=s3://b/d"])
    assert config.catalog == str(tmp_path / "catalog.csv") and config.out == "s3://b/d"
    with pytest.raises(ConfigError, match=r"data='dataset'.*no such file"):
        load_config(TrainConfig, overrides=["data=dataset", "out=/abs/run"])
    assert load_config(TrainConfig, overrides=["out=/abs/run"]).out == "/abs/run"


def test_file_uris_with_escapes_read_from_storage_and_manifests(tmp_path: Path) -> None:
    folder = tmp_path / "my music"
    tone = write_tone(folder / "tón 1.wav", 440.0, duration_s=1.0)
    uri = "file://" + str(tone).replace(" ", "%20")
    assert storage.exists(uri) and storage.read_bytes(uri) == tone.read_bytes()
    manifest = tmp_path / "m.csv"
    pd.DataFrame([{"track_id": "a", "uri": uri, "genre": "g"}]).to_csv(manifest, index=False)
    tracks = read_catalog(str(manifest), CatalogOptions(require_genre=False)).tracks
    assert list(tracks["uri"]) == [str(tone)]
