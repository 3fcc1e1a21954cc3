"""A catalog form is one reader and one entry in ``CATALOG_FORMS``; its options live in the
``catalog_options`` section that ingest and label share (docs/architecture.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from genreflow import catalog as catalog_module
from genreflow.catalog import (
    CATALOG_COLUMNS,
    Catalog,
    CatalogForm,
    CatalogOptions,
    normalise_tracks,
    read_catalog,
)
from genreflow.config import load_config
from genreflow.errors import CatalogError, ConfigError
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.pipelines.ingest import load_catalog


def read_jsonl(path: str, options: CatalogOptions) -> Catalog:
    """A throwaway form: one JSON object per line, URIs relative to the file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    df["uri"] = [str(Path(path).parent / u) for u in df["uri"]]
    return Catalog(tracks=normalise_tracks(df))


@pytest.fixture
def jsonl_form(monkeypatch: pytest.MonkeyPatch) -> CatalogForm:
    form = CatalogForm(
        "jsonl", "a .jsonl file", lambda p: p.endswith(".jsonl"), read_jsonl, remote=False
    )
    monkeypatch.setattr(catalog_module, "CATALOG_FORMS", (*catalog_module.CATALOG_FORMS, form))
    return form


def write_jsonl(path: Path, n: int = 12) -> Path:
    lines = [
        json.dumps({"track_id": f"j{i}", "uri": f"a/{i}.mp3", "genre": ["rock", "jazz"][i % 2]})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_new_form_is_one_reader_and_one_entry(tmp_path: Path, jsonl_form: CatalogForm) -> None:
    path = write_jsonl(tmp_path / "tracks.jsonl")
    catalog = read_catalog(str(path))  # form=auto finds it
    assert list(catalog.tracks.columns) == CATALOG_COLUMNS
    assert len(catalog.tracks) == 12
    assert catalog.tracks["split"].isin(["train", "val", "test"]).all()  # splits as any form
    assert catalog.tracks["uri"].iloc[0] == str(tmp_path / "a" / "0.mp3")

    # ingest's config accepts the form by name and its job reads the catalog with it
    config = load_config(
        IngestConfig,
        overrides=[f"catalog={path}", f"out={tmp_path / 'out'}", "catalog_options.form=jsonl"],
    )
    assert len(load_catalog(config).tracks) == 12
    label = load_config(LabelConfig, overrides=["catalog_options.form=jsonl"])
    assert label.catalog_options.form == "jsonl"


def test_the_options_are_one_section_shared_by_ingest_and_label(tmp_path: Path) -> None:
    options = ["catalog_options.fma_subset=large", f"catalog_options.audio_dir={tmp_path}"]
    ingest = load_config(IngestConfig, overrides=options)
    label = load_config(LabelConfig, overrides=options)
    assert ingest.catalog_options == label.catalog_options
    assert ingest.catalog_options.audio_dir == str(tmp_path)  # a path field, made absolute
    # the old flat key names the section it moved to
    with pytest.raises(ConfigError, match=r"did you mean 'catalog_options\.fma_subset'"):
        load_config(IngestConfig, overrides=["fma_subset=large"])


def test_a_named_form_is_used_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"catalog_options.form must be one of \['auto', 'fma'"):
        load_config(IngestConfig, overrides=["catalog_options.form=xml"])
    folder = tmp_path / "tree"
    (folder / "rock").mkdir(parents=True)
    with pytest.raises(CatalogError, match=r"no FMA tracks\.csv"):
        read_catalog(str(folder), CatalogOptions(form="fma"))
