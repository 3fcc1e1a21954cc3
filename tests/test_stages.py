"""The stage registry is the one list the CLI, the job scripts and the demo use."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from genreflow.cli import COMMANDS, build_parser
from genreflow.stages import STAGES

REPO = Path(__file__).resolve().parent.parent


def test_every_subcommand_is_a_registered_stage_or_a_command() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == set(STAGES) | set(COMMANDS)
    assert not set(STAGES) & set(COMMANDS)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_has_its_job_script_and_flags_that_name_config_keys(name: str) -> None:
    stage = STAGES[name]
    script = (REPO / stage.script).read_text()
    assert re.search(rf'run_job\("{name}", ', script), stage.script
    assert "sys.path" not in script  # the installed package, not a path patch
    fields = {f.name for f in dataclasses.fields(stage.config_class)}
    for flag in stage.flags:
        assert flag.dest in fields, (name, flag.name)
    assert callable(stage._load(stage.runner))


def test_job_scripts_are_exactly_the_registered_ones() -> None:
    scripts = {f"jobs/{p.name}" for p in (REPO / "jobs").glob("*.py")}
    assert scripts == {s.script for s in STAGES.values()}


def test_flags_and_overrides_reach_the_config_in_order(tmp_path: Path) -> None:
    """Flags over the YAML file, ``key=value`` over both, as the CLI and jobs apply them."""
    (tmp_path / "c.yaml").write_text("epochs: 3\nmodel: baseline_cnn\nlr: 0.01\n")
    args = build_parser().parse_args(
        ["train", "--config", str(tmp_path / "c.yaml"), "--model", "multimodal_han", "--resume",
         "--out", "runs/x", "lr=0.5"]
    )  # fmt: skip
    stage = STAGES["train"]
    config = stage.load_config(
        args.config, args.overrides, {f.dest: getattr(args, f.dest) for f in stage.flags}
    )
    assert (config.epochs, config.model, config.lr, config.resume) == (
        3,
        "multimodal_han",
        0.5,
        True,
    )
    assert Path(config.out).is_absolute()
    compare = build_parser().parse_args(["compare", "--models", "baseline_cnn, multimodal_han"])
    assert compare.models == ["baseline_cnn", "multimodal_han"]
