"""A run's work list: the catalog rows its tasks process, written once by the driver as a
Parquet file with one row group per task, read back by each task for its own group.

Why not hand the rows to Ray Data from the driver: the driver then puts the whole
catalog into the object store (on the head node of a cluster) and keeps it referenced
for the whole run; with a work list it writes the rows once, lets go of them, and each
worker fetches its few kilobytes from the output's storage. The file is a scratch file
of the run (its name starts with ``_``, which readers of the folder skip).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genreflow import storage

WORKLIST_FILE = "_worklist.parquet"


def write_worklist(groups: list[pd.DataFrame], uri: str) -> int:
    """Write ``groups`` (catalog rows, one task's each) to ``uri``, one row group each;
    returns their number."""
    if not groups:
        return 0
    schema = pa.Schema.from_pandas(pd.concat(groups[:1]), preserve_index=False)
    schema = _unify(schema, groups)
    fs, path = storage.resolve(uri)
    storage.makedirs(uri.rsplit("/", 1)[0])
    with fs.open_output_stream(path) as sink, pq.ParquetWriter(sink, schema) as writer:
        for group in groups:
            writer.write_table(pa.Table.from_pandas(group, schema=schema, preserve_index=False))
    return len(groups)


def _unify(schema: pa.Schema, groups: list[pd.DataFrame]) -> pa.Schema:
    """A schema every group fits: a column that is all-null in the first group takes its
    type from the first group where it is not."""
    fields = []
    for field in schema:
        if pa.types.is_null(field.type):
            for group in groups:
                column = group[field.name]
                if column.notna().any():
                    field = field.with_type(pa.array(column.dropna().head(8)).type)
                    break
        fields.append(field)
    return pa.schema(fields)


def read_group(uri: str, group: int) -> pd.DataFrame:
    """Row group ``group`` of the work list at ``uri``."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read_row_group(group).to_pandas()


def worklist_dataset(count: int) -> Any:
    """A Ray dataset of the work list's group numbers (column ``id``), one block each: a
    ``map_batches(fn, batch_size=None)`` after it runs one task per group."""
    import ray

    return ray.data.range(count, override_num_blocks=max(1, count))
