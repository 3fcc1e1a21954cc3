"""Where label rows become files: a Ray Data datasink whose write tasks run beside the
model actors that made the rows, so no row passes through the job's own process."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from ray.data.block import BlockAccessor
from ray.data.datasource.datasink import Datasink

from genreflow import faultpoints, storage
from genreflow.formats.labels import label_file_name


class LabelFiles(Datasink[int]):
    """Writes the label rows of one partition. Each write task takes the actors' blocks
    (bundled to at least ``rows_per_file`` rows where they are) and writes them as files
    of at most ``rows_per_file`` rows, one after another, each whole or not at all
    (:func:`storage.write_parquet_atomic`). A killed run keeps every file it finished;
    the next run labels only the tracks they lack."""

    def __init__(self, partition: str, rows_per_file: int, *, attempt: str) -> None:
        self.partition = partition
        self.rows_per_file = rows_per_file
        self.attempt = attempt

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables)
        for start in range(0, table.num_rows, self.rows_per_file):
            rows = table.slice(start, self.rows_per_file)
            name = label_file_name(self.attempt, rows.column("track_id").to_pylist())
            storage.write_parquet_atomic(rows, storage.join(self.partition, name))
            faultpoints.reached("labels:file-written")
        return table.num_rows
