from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genreflow.analysis import AnalyzeConfig
from genreflow.config import load_config
from genreflow.errors import ConfigError
from genreflow.index import IndexConfig
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.pipelines.compare import CompareConfig
from genreflow.tokens import TokenSpec, preset
from genreflow.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
JOB_CONFIGS = {
    "ingest.yaml": IngestConfig,
    "train.yaml": TrainConfig,
    "train-musicnn.yaml": TrainConfig,
    "label.yaml": LabelConfig,
    "index.yaml": IndexConfig,
    "analyze.yaml": AnalyzeConfig,
    "compare.yaml": CompareConfig,
}


def test_yaml_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("catalog: a.csv\nshard_size: 8\nspec: paper001\n")
    config = load_config(
        IngestConfig, path, ["shard_size=16", "allow_silent=true", "spec.n_tokens=5"], out="o"
    )
    # paths come back absolute, against the working directory (tests/test_paths.py)
    assert config.catalog == str(tmp_path / "a.csv") and config.out == str(tmp_path / "o")
    assert config.shard_size == 16 and config.allow_silent is True
    assert config.spec == TokenSpec(**{**preset("paper001").to_dict(), "n_tokens": 5})


def test_unknown_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'shard_sise'.*did you mean 'shard_size'"
    ):
        load_config(IngestConfig, overrides=["shard_sise=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'spec.n_token'"):
        load_config(IngestConfig, overrides=["spec.n_token=3"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("shard_size=many", "'shard_size' must be an integer"),
        ("allow_silent=3", "'allow_silent' must be true or false"),
        ("shard_size=0", "shard_size must be >= 1"),
        ("max_error_rate=2", "max_error_rate must be in"),
        ("spec=paper999", "unknown token spec preset"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(IngestConfig, overrides=[override])


@pytest.mark.parametrize("value", ["-1", "20"])
def test_worker_niceness_is_an_unprivileged_increment(value: str) -> None:
    with pytest.raises(ConfigError, match=r"resources\.worker_niceness must be 0-19 or null"):
        load_config(TrainConfig, overrides=[f"resources.worker_niceness={value}"])
    config = load_config(TrainConfig, overrides=["resources.worker_niceness=null"])
    assert config.resources.worker_niceness is None


def test_a_resource_key_at_the_top_level_names_its_section() -> None:
    """Resources moved under ``resources:``; a user typing the old key is told where."""
    with pytest.raises(ConfigError, match=r"did you mean 'resources\.num_workers'"):
        load_config(TrainConfig, overrides=["num_workers=2"])
    with pytest.raises(ConfigError, match=r"did you mean 'train\.resources\.use_gpu'"):
        load_config(CompareConfig, overrides=["train.use_gpu=true"])
    config = load_config(TrainConfig, overrides=["resources.num_workers=2", "epochs=3"])
    assert (config.resources.num_workers, config.epochs) == (2, 3)


def test_a_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(IngestConfig, tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(IngestConfig, tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(JOB_CONFIGS))
def test_every_job_config_loads_and_starts_with_its_submit_line(name: str) -> None:
    path = REPO / "configs" / name
    first = path.read_text().splitlines()[0]
    job = name.replace(".yaml", "").split("-")[0]
    assert first.startswith("# ray job submit --working-dir . -- python jobs/")
    assert f"--config configs/{name}" in first
    script = first.split("python ", 1)[1].split()[0]
    assert (REPO / script).is_file(), script
    assert job in script or (job, script) == ("index", "jobs/build_index.py")
    load_config(JOB_CONFIGS[name], path)


def test_every_yaml_under_configs_is_covered() -> None:
    names = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert names == set(JOB_CONFIGS)
    for p in (REPO / "configs").glob("*.yaml"):
        assert isinstance(yaml.safe_load(p.read_text()), dict)
