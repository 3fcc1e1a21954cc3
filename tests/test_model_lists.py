"""Model lists are derived from the registry: a config file, the help text or the README
that names some of the models as if they were all fails here."""

from __future__ import annotations

import re
from pathlib import Path

from genreflow.model_registry import model_names
from genreflow.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
SUBSET_WORDS = ("for example", "e.g.", "subset", "such as", "--models", "models=")


def _lines() -> list[tuple[str, str]]:
    found = [
        (f"{path.relative_to(ROOT)}:{n}", line)
        for path in [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "README.md"]
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
    ]
    found += [
        (f"genreflow {stage.name} {flag.name}", flag.help)
        for stage in STAGES.values()
        for flag in stage.flags
    ]
    return found


def _named(line: str) -> set[str]:
    return {name for name in model_names() if re.search(rf"\b{name}\b", line)}


def test_no_list_names_a_part_of_the_registry_as_if_it_were_all() -> None:
    partial = [
        (where, line)
        for where, line in _lines()
        if 2 <= len(_named(line)) < len(model_names())
        and not any(word in line.lower() for word in SUBSET_WORDS)
    ]
    assert not partial, f"lists of some models, not marked as a subset: {partial}"


def test_the_help_text_lists_every_registered_model() -> None:
    (flag,) = [f for f in STAGES["train"].flags if f.name == "--model"]
    assert _named(flag.help) == set(model_names())


def test_the_check_finds_a_list_that_left_a_model_out() -> None:
    everyone = " | ".join(model_names())
    assert len(_named(everyone)) == len(model_names())
    left_out = " | ".join(model_names()[:-1])
    assert 2 <= len(_named(left_out)) < len(model_names())  # what the first test refuses
    assert any(w in "models: [a, b]   # a subset, for example" for w in SUBSET_WORDS)
