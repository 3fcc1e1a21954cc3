"""A year of nightly label partitions: compaction keeps what readers open to a handful of
partitions and files, with the same rows, and a compaction cut short loses nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genreflow.formats import labels as fl
from genreflow.formats.labels import LABELS_SCHEMA, RUN_FILE

NIGHTS = 365


def _night(out: Path, night: int, version: str, rows: int) -> None:
    """One finished incremental partition as ``genreflow label`` leaves it."""
    part = out / f"run-2026{night:04d}T000000-{night:06x}"
    (part / "errors").mkdir(parents=True)
    ids = [f"{night}-{i}" for i in range(rows)]
    table = pa.Table.from_pylist(
        [
            {
                "track_id": t,
                "genre": "rock",
                "genre_prob": 0.5,
                "embedding": [float(night), float(i)],
                "model_version": version,
                "labelled_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
            for i, t in enumerate(ids)
        ],
        schema=LABELS_SCHEMA,
    )
    pq.write_table(table, part / "labels-00000.parquet")
    if night % 50 == 0:
        errors = pa.table({"track_id": [f"{night}-bad"], "kind": ["undecodable"]})
        pq.write_table(errors, part / "errors" / "part-0.parquet")
    record = {"run": part.name, "model_version": version, "labelled": rows, "tracks_in": rows,
              "checkpoint": f"ckpt-{version}", "input": "catalog.csv"}  # fmt: skip
    (part / RUN_FILE).write_text(json.dumps(record))


@pytest.fixture
def year(tmp_path: Path) -> Path:
    out = tmp_path / "labels"
    _night(out, 0, "v1", 40)  # the first full run: the largest partition
    for night in range(1, NIGHTS):
        _night(out, night, "v1", 3)
    _night(out, NIGHTS, "v0", 2)  # an older model's labels are left alone
    return out


def _rows(out: Path) -> list[tuple[str, str]]:
    frame = fl.read_labels(str(out), ["track_id", "model_version"])
    return sorted(zip(frame["track_id"], frame["model_version"], strict=True))


def test_a_year_of_nights_reads_as_two_partitions_with_the_same_rows(year: Path) -> None:
    before = _rows(year)
    files, version, _ = fl.label_files(str(year), "v1")
    assert len(files) == NIGHTS and version == "v1"
    done_before = fl.labelled_by(fl.complete_partitions(str(year)), "v1")

    merged = fl.compact(str(year), "v1", after=8, rows_per_file=500)

    assert merged is not None
    files, _, checkpoint = fl.label_files(str(year), "v1")
    assert len(files) == 1 + 3  # the first run's file, then 364 x 3 rows in files of 500
    assert checkpoint == "ckpt-v1"
    assert len(fl.partitions(str(year))) == 3  # the first run, the merged nights, v0
    assert _rows(year) == before
    assert fl.labelled_by(fl.complete_partitions(str(year)), "v1") == done_before
    errors = pq.read_table(Path(merged) / "errors").column("track_id").to_pylist()
    assert sorted(errors) == sorted(f"{n}-bad" for n in range(50, NIGHTS, 50))
    record = json.loads((Path(merged) / RUN_FILE).read_text())
    assert record["labelled"] == 3 * (NIGHTS - 1) and len(record["compacted_from"]) == NIGHTS - 1
    assert fl.compact(str(year), "v1", after=8, rows_per_file=500) is None  # two: nothing to do


def test_few_partitions_are_left_as_they_are(year: Path) -> None:
    assert fl.compact(str(year), "v0", after=8, rows_per_file=500) is None
    assert fl.compact(str(year), "v1", after=0, rows_per_file=500) is None  # 0: never
    assert len(fl.partitions(str(year))) == NIGHTS + 1


def test_a_compaction_cut_short_loses_and_repeats_nothing(
    year: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _rows(year)

    def cut(name: str) -> None:
        if name == "labels:compacted-before-cleanup":
            raise KeyboardInterrupt  # the process dies between its record and the cleanup

    monkeypatch.setattr(fl.faultpoints, "reached", cut)
    with pytest.raises(KeyboardInterrupt):
        fl.compact(str(year), "v1", after=8, rows_per_file=500)
    assert len(fl.partitions(str(year))) == NIGHTS + 2  # the merged nights are still there
    assert _rows(year) == before  # ...and skipped: every row once
    monkeypatch.undo()
    fl.drop_merged(str(year))  # the next label run's first step
    assert len(fl.partitions(str(year))) == 3
    assert _rows(year) == before


def test_a_compaction_cut_before_its_record_is_an_unfinished_run(
    year: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _rows(year)
    real = fl.storage.write_json_atomic

    def die_on_record(uri: str, value: object) -> None:
        if uri.endswith(RUN_FILE):
            raise KeyboardInterrupt
        real(uri, value)

    monkeypatch.setattr(fl.storage, "write_json_atomic", die_on_record)
    with pytest.raises(KeyboardInterrupt):
        fl.compact(str(year), "v1", after=8, rows_per_file=500)
    assert len(fl.partitions(str(year))) == NIGHTS + 2
    assert len(fl.complete_partitions(str(year))) == NIGHTS + 1  # the new one is unfinished
    assert _rows(year) == before


def test_a_file_a_killed_run_finished_late_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    """A continued run trusts the files it found and its own; a label file a killed job's
    write task, or an error file its decode task, finished after the continued run began
    holds tracks it labelled (or failed) again. The catalog's refused rows are the job's."""
    from genreflow.formats.labels import error_file_name, label_file_name
    from genreflow.pipelines.label import _drop_late_files

    part = tmp_path / "run-1"
    (part / "errors").mkdir(parents=True)
    found, mine, late = (part / label_file_name(a, [t]) for a, t in
                         (("old", "a"), ("new", "b"), ("old", "c")))  # fmt: skip
    errors = part / "errors"
    found_e, mine_e, late_e = (errors / error_file_name(a, [t]) for a, t in
                               (("old", "d"), ("new", "e"), ("old", "f")))  # fmt: skip
    catalog = errors / "catalog-part-0123.parquet"
    for f in (found, mine, late, found_e, mine_e, late_e, catalog):
        pq.write_table(pa.table({"track_id": [f.stem]}), f)
    _drop_late_files(str(part), trusted={str(found), str(found_e)}, attempt="new")
    assert sorted(p.name for p in part.glob("*.parquet")) == sorted([found.name, mine.name])
    assert sorted(p.name for p in errors.iterdir()) == sorted(
        [found_e.name, mine_e.name, catalog.name]
    )
