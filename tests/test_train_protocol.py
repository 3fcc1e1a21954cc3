"""Which settings make two training runs the same protocol: derived from TrainConfig."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from genreflow.config import load_config
from genreflow.errors import ConfigError
from genreflow.train import NOT_PROTOCOL_KEYS, PROTOCOL_KEYS, TrainConfig, finished_run


def test_every_field_is_classified() -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PROTOCOL_KEYS) | NOT_PROTOCOL_KEYS == names
    assert not set(PROTOCOL_KEYS) & NOT_PROTOCOL_KEYS
    assert names >= NOT_PROTOCOL_KEYS  # no stale exclusion


@pytest.mark.parametrize(
    "override",
    ["mixup_alpha=0.2", "lr_schedule=cosine", "label_smoothing=0.1", "task=multi",
     "spec_augment=2", "frontend_lr_scale=0.5", "gain_jitter_db=3.0"],
)  # fmt: skip
def test_a_recipe_change_is_not_a_finished_run(tmp_path: Path, override: str) -> None:
    base = load_config(TrainConfig, data="/d", out=str(tmp_path))
    (tmp_path / "metrics.json").write_text(json.dumps({"config": dataclasses.asdict(base)}))
    assert finished_run(str(tmp_path), base) is not None
    changed = load_config(TrainConfig, overrides=[override], data="/d", out=str(tmp_path))
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        finished_run(str(tmp_path), changed)
    faster = load_config(
        TrainConfig, overrides=["resources.num_workers=2"], data="/d", out=str(tmp_path)
    )
    assert finished_run(str(tmp_path), faster) is not None
