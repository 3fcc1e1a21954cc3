"""A run's work list: the catalog rows its tasks process, written once by the driver as
Parquet files of one row group per task (``GROUPS_PER_FILE`` groups a file, so that a
task reads a footer of bounded size whatever the catalog's), read back by each task for
its own group.

Why not hand the rows to Ray Data from the driver: the driver then puts the whole
catalog into the object store (on the head node of a cluster) and keeps it referenced
for the whole run; with a work list it writes the rows once, lets go of them, and each
worker fetches its few kilobytes from the output's storage. The file is a scratch file
folder of the run (its name starts with ``_``, which readers of the output skip).
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genreflow import storage

WORKLIST_DIR = "_worklist"
GROUPS_PER_FILE = 64


def write_worklist(groups: list[pd.DataFrame], folder: str) -> int:
    """Write ``groups`` (catalog rows, one task's each) into ``folder``, one row group
    each; returns their number. Whatever the folder held is replaced."""
    storage.delete_tree(folder)
    if not groups:
        return 0
    schema = _unify(pa.Schema.from_pandas(groups[0], preserve_index=False), groups)
    for first in range(0, len(groups), GROUPS_PER_FILE):
        sink = io.BytesIO()
        with pq.ParquetWriter(sink, schema) as writer:
            for group in groups[first : first + GROUPS_PER_FILE]:
                writer.write_table(pa.Table.from_pandas(group, schema=schema, preserve_index=False))
        storage.write_bytes_atomic(_file(folder, first // GROUPS_PER_FILE), sink.getvalue())
    return len(groups)


def _file(folder: str, number: int) -> str:
    return storage.join(folder, f"part-{number:05d}.parquet")


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


def read_group(folder: str, group: int) -> pd.DataFrame:
    """Group ``group`` of the work list in ``folder``."""
    table = storage.read_row_group(_file(folder, group // GROUPS_PER_FILE), group % GROUPS_PER_FILE)
    return table.to_pandas()
