"""Runtime helpers that need no running Ray."""

from __future__ import annotations

import ray.data

from genreflow.runtime import data_memory_limit


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
