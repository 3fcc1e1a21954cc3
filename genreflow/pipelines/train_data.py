"""The training data path: from a split of the dataset to a worker's device batches.

One unit a reader can hold: which shards a split's rows are in (:func:`read_split`:
only that split's shards, see ``shard_splits`` in the dataset manifest), how each run
part's rows are chosen (:class:`genreflow.train.Part`), one of three strategies by size
(:func:`setup_data`: small splits prepared on the driver and put in the object store
whole; larger ones streamed by Ray Data and materialised when they fit a quarter of the
object store; the largest streamed again every epoch), the rows prepared for the model
(:func:`prepare_batch`: tokens, targets, lyrics ids), and on each worker the batches of
its shard as tensors on its device (:class:`ShardBatches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from genreflow import storage
from genreflow.formats.dataset import (
    mood_index,
    multi_hot,
    read_dataset_manifest,
    split_shards,
    tokens_numpy,
)
from genreflow.models import model_class
from genreflow.models.lyrics import LyricsVocab
from genreflow.runtime import read_parquet
from genreflow.train import (
    LYRICS_COLUMN,
    TAG_COLUMNS,
    TENSOR_COLUMNS,
    Part,
    TrainConfig,
    epoch_seed,
    tensor_batch,
    to_device,
)


def data_columns(config: TrainConfig) -> list[str]:
    """The shard columns a run's batches are made of (besides ``split``)."""
    return ["tokens", "genre_idx", "valence", *(["tag_idx"] if config.task != "single" else [])]


def read_split(
    config: TrainConfig, split: str, extra: list[str] | None = None, *, lyrics: bool
) -> Any:
    """One split of the shards, only the columns named (Ray pushes both into the reader)."""
    from ray.data.expressions import col

    shards = storage.join(config.data, "shards")
    files = split_shards(config.data, read_dataset_manifest(config.data), [split])
    fs, _ = storage.resolve(shards)
    files = files or [shards]  # no rows of that split: an empty read of the same schema
    columns = ["split", *data_columns(config), *(extra or [])]
    columns += ["lyrics"] if lyrics else []
    ds = read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs, columns=columns)
    return ds.filter(expr=col("split") == split)  # a shard of an older dataset mixes them


def _keep_part(batch: pd.DataFrame, part: Part) -> pd.DataFrame:
    mask = part.mask(
        batch["split"].tolist(), batch["track_id"].tolist(), batch["artist_id"].tolist()
    )
    return batch[mask]


def _table_mask(part: Part, table: pa.Table) -> np.ndarray:
    columns = {name: table.column(name).to_pylist() for name in part.columns}
    return part.mask(columns["split"], columns.get("track_id", ()), columns.get("artist_id", ()))


SMALL_SPLIT_BYTES = 256 * 2**20  # below this a split is prepared on the driver


def _cache(
    config: TrainConfig,
    manifest: dict[str, Any],
    splits: list[str],
    *,
    limit: float = float("inf"),
) -> bool:
    """Whether to keep the prepared splits in the object store instead of re-reading the
    shards every epoch (re-reading costs seconds of start-up per epoch on small data):
    with ``cache=auto``, when they take under a quarter of it (and under ``limit`` bytes)."""
    if config.resources.cache != "auto":
        return config.resources.cache == "always" and limit == float("inf")
    import ray

    rows = sum(manifest["counts"]["by_split"].get(s, 0) for s in splits)
    size = rows * int(np.prod(manifest["token_shape"])) * 2  # float16 tokens dominate
    capacity = ray.available_resources().get("object_store_memory", 0)
    return size < min(capacity / 4, limit)


def setup_data(
    config: TrainConfig,
    manifest: dict[str, Any],
    vocab: LyricsVocab | None,
    parts: dict[str, Part],
) -> dict[str, Any]:
    """The prepared splits of ``parts`` (their rows chosen by :class:`Part` alone), built
    one of three ways by size: small splits are read and prepared on the driver as Arrow
    tables, which the run hands each worker whole through the object store
    (:class:`TableShard`: no Ray Data, whose per-run actors cost seconds of process starts
    for a few megabytes); larger ones are Ray datasets streamed from the shards, and
    materialized when they take under a quarter of the object store; the largest stream
    again every epoch. On the driver an empty part is left out."""
    splits = sorted({part.split for part in parts.values()})
    extra = sorted({c for part in parts.values() for c in part.columns} - {"split"})
    if _cache(config, manifest, splits, limit=SMALL_SPLIT_BYTES):
        tables = _small_tables(config, vocab, splits=splits, extra=extra)
        built = {}
        for name, part in parts.items():
            table = tables[part.split]
            rows = table.filter(pa.array(_table_mask(part, table), type=pa.bool_()))
            if rows.num_rows:
                built[name] = _table_dataset(rows, vocab, config)
        return built
    datasets = {}
    for name, part in parts.items():
        ds = read_split(config, part.split, extra, lyrics=vocab is not None)
        if part.fold is not None:
            ds = ds.map_batches(_keep_part, batch_format="pandas", fn_kwargs={"part": part})
        datasets[name] = _prepare_frame(ds, vocab, config)
    if _cache(config, manifest, splits):
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    return datasets


def _small_tables(
    config: TrainConfig, vocab: LyricsVocab | None, *, splits: list[str], extra: list[str]
) -> dict[str, pa.Table]:
    """The rows of small splits, read with pyarrow on the driver (no Ray Data tasks)."""
    columns = ["split", *data_columns(config), *extra] + (["lyrics"] if vocab else [])
    files = split_shards(config.data, read_dataset_manifest(config.data), splits)
    parts: dict[str, list[pa.Table]] = {split: [] for split in splits}
    for table in storage.read_parquet_columns(files, columns):
        for split in splits:
            parts[split].append(table.filter(pc.equal(table.column("split"), split)))
    return {split: pa.concat_tables(tables) for split, tables in parts.items()}


def _table_dataset(table: pa.Table, vocab: LyricsVocab | None, config: TrainConfig) -> pa.Table:
    """Prepare rows on the driver: the same rows and columns as :func:`_prepare_frame`,
    as one Arrow table that the run hands its workers whole (see :class:`TableShard`)."""
    max_s, max_w = _lyrics_bounds(config, vocab)
    prepared = prepare_batch(
        {
            "tokens": tokens_numpy(table.column("tokens")),
            "genre_idx": table.column("genre_idx").to_numpy(),
            "valence": table.column("valence").to_numpy(zero_copy_only=False),
            **({"lyrics": table.column("lyrics").to_pylist()} if vocab else {}),
            **({"tag_idx": table.column("tag_idx").to_pylist()} if config.task != "single" else {}),
        },
        vocab=vocab,
        max_sentences=max_s,
        max_words=max_w,
        n_tags=_n_tags(config),
    )
    arrays = {
        name: pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(value))
        if value.ndim > 1
        else pa.array(value)
        for name, value in prepared.items()
    }
    return pa.table(arrays)


def _prepare_frame(ds: Any, vocab: LyricsVocab | None, config: TrainConfig) -> Any:
    """A Ray dataset of shard rows -> one of the prepared tensor columns (streamed)."""
    max_s, max_w = _lyrics_bounds(config, vocab)
    n_tags = _n_tags(config)
    keep = TENSOR_COLUMNS + (TAG_COLUMNS if n_tags else [])
    keep += [LYRICS_COLUMN] if vocab is not None else []
    return ds.map_batches(
        prepare_batch,
        batch_format="numpy",
        fn_kwargs={"vocab": vocab, "max_sentences": max_s, "max_words": max_w, "n_tags": n_tags},
    ).select_columns(keep)


def prepare_batch(
    batch: dict[str, np.ndarray],
    *,
    vocab: LyricsVocab | None,
    max_sentences: int,
    max_words: int,
    n_tags: int = 0,
) -> dict[str, np.ndarray]:
    """Shard rows -> the tensor columns training reads: tokens, genre_idx, mood_idx (from
    valence; -1 unknown), for a multi-label task (``n_tags``) the multi-hot ``tags`` and
    ``has_tags``, and for lyrics models lyrics ids."""
    out = {
        "tokens": batch["tokens"],
        "genre_idx": np.asarray(batch["genre_idx"]).astype(np.int64),
        "mood_idx": np.array([mood_index(v) for v in batch["valence"]], dtype=np.int64),
    }
    if n_tags:
        out["tags"], out["has_tags"] = multi_hot(batch["tag_idx"], n_tags)
    if vocab is not None:
        texts = [t if isinstance(t, str) else None for t in batch["lyrics"]]
        out[LYRICS_COLUMN] = vocab.encode_batch(
            texts, max_sentences=max_sentences, max_words=max_words
        )
    return out


def _lyrics_bounds(config: TrainConfig, vocab: LyricsVocab | None) -> tuple[int, int]:
    if vocab is None:
        return 50, 20
    hp = model_class(config.model).hyperparameters(config.preset, config.model_overrides)
    return int(hp["max_sentences"]), int(hp["max_words"])


def _n_tags(config: TrainConfig) -> int:
    if config.task == "single":
        return 0
    return len(read_dataset_manifest(config.data)["labels"].get("tags", []))


def prefetch_batches(config: TrainConfig, device: torch.device) -> int:
    """Batches the iterator prepares ahead in a background thread. On a GPU the CPU is
    free while the device computes, so one batch ahead hides the data work; on a CPU
    worker a background thread takes cores from the step's torch threads, whose
    parallel regions then wait for the slowest thread, so batches are made in line."""
    if config.resources.prefetch_batches is not None:
        return config.resources.prefetch_batches
    return 1 if device.type == "cuda" else 0


class TableShard:
    """A worker's rows of a small prepared split held whole in the object store: every
    ``world``-th row from ``rank`` on, the same number on every worker (as Ray Data's
    equal split gives them), as numpy columns."""

    def __init__(self, table: pa.Table, rank: int, world: int) -> None:
        per_worker = table.num_rows // world
        take = np.arange(rank, per_worker * world, world)
        self.columns = {
            name: _numpy_column(table.column(name)).take(take, axis=0)
            for name in table.column_names
        }
        self.rows = len(take)

    def batches(self, batch_size: int, *, seed: int | None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` rows, in a seeded random order when ``seed`` is given."""
        order = np.random.default_rng(seed).permutation(self.rows) if seed is not None else None
        for start in range(0, self.rows, batch_size):
            rows = np.arange(start, min(start + batch_size, self.rows))
            picked = order[rows] if order is not None else rows
            yield {name: column[picked] for name, column in self.columns.items()}


def _numpy_column(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if isinstance(array.type, pa.FixedShapeTensorType):
        return np.asarray(array.to_numpy_ndarray())
    return np.asarray(array.to_numpy(zero_copy_only=False))


class ShardBatches:
    """A worker's device batches from its Ray dataset shard: ``batch_size`` rows, shuffled
    in a local buffer for training (seeded by epoch and rank), converted with numpy
    (:func:`tensor_batch`) and moved to ``device``."""

    def __init__(self, config: TrainConfig, device: torch.device, rank: int) -> None:
        from ray.data.collate_fn import NumpyBatchCollateFn

        class Collate(NumpyBatchCollateFn):  # RAY: the iterator's batch -> tensors hook
            def __call__(self, batch: dict[str, np.ndarray]) -> Any:  # Ray: CollatedData
                return tensor_batch(batch, float_tokens=device.type == "cpu")

        self.config, self.device, self.rank = config, device, rank
        self.collate = Collate()
        self.prefetch = prefetch_batches(config, device)

    def __call__(
        self, shard: Any, *, shuffle_epoch: int | None = None
    ) -> Iterator[dict[str, Tensor]]:
        """Batches of ``shard``: a Ray dataset shard (``get_dataset_shard``) or a
        :class:`TableShard`; shuffled when ``shuffle_epoch`` is given."""
        config, shuffle = self.config, shuffle_epoch is not None
        if isinstance(shard, TableShard):
            seed = epoch_seed(config.seed, shuffle_epoch, self.rank) if shuffle else None
            for rows in shard.batches(config.batch_size, seed=seed):
                yield to_device(self.collate(rows), self.device)
            return
        for batch in shard.iter_torch_batches(
            batch_size=config.batch_size,
            local_shuffle_buffer_size=config.shuffle_buffer if shuffle else None,
            local_shuffle_seed=epoch_seed(config.seed, shuffle_epoch, self.rank)
            if shuffle
            else None,
            pin_memory=self.device.type == "cuda",
            device="cpu",
            collate_fn=self.collate,
            prefetch_batches=self.prefetch,
        ):
            yield to_device(batch, self.device)
