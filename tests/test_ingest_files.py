"""The files of an ingest output folder across a killed run and its rerun."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genreflow.formats.dataset import shard_name
from genreflow.ingest import drop_late_files


def test_a_shard_a_killed_run_finished_late_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    """A rerun trusts the files it listed and the shards it planned; a shard or error file
    a killed run's decode task finished after the rerun listed the folder holds tracks
    the rerun wrote again in other shards. The catalog's refused rows are the job's."""
    out = tmp_path / "dataset"
    (out / "shards").mkdir(parents=True)
    (out / "errors").mkdir()
    listed = out / "shards" / shard_name(["a", "b"])
    ours = out / "shards" / shard_name(["c", "d"])
    ours_errors = out / "errors" / shard_name(["c", "d"])
    late = out / "shards" / shard_name(["c"])  # the killed run's chunk: c again
    late_errors = out / "errors" / shard_name(["c"])
    catalog = out / "errors" / "catalog-part-0123.parquet"
    for f in (listed, ours, ours_errors, late, late_errors, catalog):
        pq.write_table(pa.table({"track_id": [f.stem]}), f)
    drop_late_files(str(out), listed={str(listed)}, ours={ours.name})
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted([listed.name, ours.name])
    assert sorted(p.name for p in (out / "errors").iterdir()) == sorted(
        [ours_errors.name, catalog.name]
    )
