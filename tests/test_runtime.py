"""Runtime helpers: Ray Data settings and the Parquet file reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray.data

from genreflow.formats.dataset import tokens_numpy
from genreflow.runtime import data_memory_limit, group_files, read_parquet_files


@pytest.mark.usefixtures("ray_session")
def test_memory_limit_reaches_datasets_made_inside_and_is_restored() -> None:
    context = ray.data.DataContext.get_current()
    before = context.execution_options.resource_limits.object_store_memory
    with data_memory_limit(0.5):
        ds = ray.data.range(4)  # a dataset copies the context it was made under
        assert ds.context.execution_options.resource_limits.object_store_memory == 2**29
    assert context.execution_options.resource_limits.object_store_memory == before
    with data_memory_limit(None):
        assert context.execution_options.resource_limits.object_store_memory == before
    blocks = context.target_max_block_size
    with data_memory_limit(None, block_mb=16):
        assert ray.data.range(4).context.target_max_block_size == 16 * 2**20
    assert context.target_max_block_size == blocks


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("task_bytes", "concurrency", "actors_from", "drop"),
    [
        (1, None, 1, False),  # a task per file
        (2**30, None, 1, False),  # one task for all
        (1, 2, 1, True),  # two reader actors, some ids left out
        (1, 2, 4, True),  # fewer reads than actors_from: tasks, some ids left out
    ],
)
def test_parquet_files_read_as_pyarrow_reads_them(
    tmp_path: Path, task_bytes: int, concurrency: int | None, actors_from: int, drop: bool
) -> None:
    tensor = pa.fixed_shape_tensor(pa.float16(), [2, 3])
    rng = np.random.default_rng(0)
    uris = []
    for i, rows in enumerate([5, 0, 7]):
        values = rng.standard_normal((rows, 2, 3)).astype(np.float16)
        storage_array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 6)
        table = pa.table(
            {
                "track_id": pa.array([f"f{i}-{r}" for r in range(rows)], pa.string()),
                "tokens": pa.ExtensionArray.from_storage(tensor, storage_array),
                "genre": pa.array(["rock"] * rows, pa.string()),
            }
        )
        uri = str(tmp_path / f"part-{i}.parquet")
        pq.write_table(table, uri, row_group_size=3)
        uris.append(uri)
    expected = pa.concat_tables(pq.read_table(u, columns=["track_id", "tokens"]) for u in uris)
    dropped = {"f0-1", "f2-0", "f2-1", "f2-2", "f2-3", "f2-4", "f2-5", "f2-6"} if drop else set()
    left_out = pc.is_in(expected["track_id"], pa.array(sorted(dropped), pa.string()))
    expected = expected.filter(pc.invert(left_out))

    with data_memory_limit(None, block_mb=30 / 2**20):  # blocks of a row or two
        ds = read_parquet_files(
            [(u, Path(u).stat().st_size) for u in uris],
            columns=["track_id", "tokens"],
            num_cpus=0.25,
            task_bytes=task_bytes,
            concurrency=concurrency,
            drop_ids=dropped,
            actors_from=actors_from,
        ).materialize()
        got = ds.to_pandas().sort_values("track_id").reset_index(drop=True)
        assert ds.num_blocks() > len(uris)
        # long-lived reader actors only with a cap and enough reads (task_bytes=1: one a file)
        in_actors = concurrency is not None and task_bytes == 1 and len(uris) >= actors_from
        assert ("ParquetReader" in ds.stats()) == in_actors

    want = expected.sort_by("track_id")
    assert list(got.columns) == ["track_id", "tokens"]
    assert got["track_id"].tolist() == want.column("track_id").to_pylist()
    assert np.array_equal(np.stack(got["tokens"]), tokens_numpy(want.column("tokens")))


@pytest.mark.usefixtures("ray_session")
def test_an_unreadable_parquet_file_fails_the_read_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "part-0.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(Exception, match=r"part-0\.parquet"):
        read_parquet_files([(str(bad), 18)], columns=["track_id"], num_cpus=0.25).take_all()


def test_small_files_share_a_read_task_and_large_ones_get_their_own() -> None:
    files = [("a", 10), ("b", 30), ("c", 70), ("d", 5), ("e", 200), ("f", 1)]
    assert group_files(files, task_bytes=100) == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    assert group_files(files, task_bytes=1) == [[u] for u, _ in files]
    assert group_files([], task_bytes=100) == []
