"""The index job: label embeddings -> a tuned FAISS index, published atomically, plus a
neighbours table computed by a Ray Data actor pool."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genreflow import index as fidx
from genreflow import storage
from genreflow.entry import mark_started
from genreflow.errors import ConfigError, GenreflowError
from genreflow.pipelines.label import RUN_FILE, complete_partitions
from genreflow.runtime import check_actor_fit, init_ray, read_parquet_files

log = logging.getLogger(__name__)

NEIGHBOURS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string()),
        pa.field(
            "neighbours",
            pa.list_(pa.struct([("track_id", pa.string()), ("score", pa.float32())])),
        ),
    ]
)


@dataclass
class IndexResult:
    out: str
    folder: str
    info: dict[str, Any]
    neighbour_rows: int
    seconds: float

    def summary(self) -> str:
        info = self.info
        params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "exact"
        text = (
            f"index -> {self.folder}: {info['count']} tracks of dimension {info['dimension']}, "
            f"{info['index_type']} ({info['factory']}, {params}) built on {info['built_on']}; "
            f"recall@10 {info['recall_at_10']:.3f} at {info['qps']:.0f} queries/s "
            f"(exact search {info['exact_qps']:.0f}/s); model {info['model_version']}"
        )
        if self.neighbour_rows:
            text += f"; neighbours table: {self.neighbour_rows} rows"
        return text + f"; {self.seconds:.1f} s."


def label_files(labels: str, version: str | None) -> tuple[list[str], str, str | None]:
    """The label Parquet files to index, the model version and its checkpoint.

    ``version`` None takes the newest finished partition's model version.

    Raises:
        GenreflowError: no finished partitions, or none of that version.
    """
    parts = complete_partitions(labels)
    if not parts:
        raise GenreflowError(f"no finished label runs in {labels!r}: run `genreflow label` first")
    records = [storage.read_json(storage.join(p, RUN_FILE)) for p in parts]
    if version is None:
        version = str(records[-1]["model_version"])
    chosen = [p for p, r in zip(parts, records, strict=True) if r["model_version"] == version]
    if not chosen:
        known = sorted({str(r["model_version"]) for r in records})
        raise GenreflowError(
            f"no label runs of model_version {version!r} in {labels!r}; it holds {known}"
        )
    checkpoint = next(
        (str(r["checkpoint"]) for p, r in zip(parts, records, strict=True) if p in chosen[-1:]),
        None,
    )
    files = [f for p in chosen for f in storage.list_files(p, suffix=".parquet")]
    return files, version, checkpoint


def embedding_blocks(files: list[str], *, version: str, batch_size: int) -> Iterator[fidx.Block]:
    """Stream ``(track_id, embedding, genre)`` blocks of one model version; each track
    once (the first row met wins)."""
    seen: set[str] = set()
    for uri in files:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle)
            columns = ["track_id", "genre", "embedding", "model_version"]
            for batch in reader.iter_batches(batch_size=batch_size, columns=columns):
                frame = batch.to_pydict()
                keep = [
                    i
                    for i, (t, v) in enumerate(
                        zip(frame["track_id"], frame["model_version"], strict=True)
                    )
                    if v == version and t not in seen
                ]
                if not keep:
                    continue
                ids = [frame["track_id"][i] for i in keep]
                seen.update(ids)
                emb = batch.column("embedding").take(pa.array(keep))
                dim = len(emb[0]) if len(emb) else 0
                flat = emb.flatten().to_numpy(zero_copy_only=False)
                if len(flat) != dim * len(keep):
                    raise GenreflowError(f"{uri!r}: embeddings of differing lengths")
                yield fidx.Block(
                    np.asarray(ids, dtype=object),
                    np.ascontiguousarray(flat.reshape(len(keep), dim), dtype=np.float32),
                    np.asarray([frame["genre"][i] for i in keep], dtype=object),
                )


def run_index(config: fidx.IndexConfig) -> IndexResult:
    """Build, tune and publish the index of ``config.labels`` into ``config.out``."""
    start = time.perf_counter()
    for key in ("labels", "out"):
        if not getattr(config, key):
            raise ConfigError(f"no {key} given: set {key}=... (or --{key} ...)")
    gpus = fidx.select_gpus(config.device, fidx.faiss_gpus())
    files, version, checkpoint = label_files(config.labels, config.model_version)
    mark_started()

    def blocks() -> Iterator[fidx.Block]:
        return embedding_blocks(files, version=version, batch_size=config.batch_size)

    built = fidx.build_index(blocks, config=config, gpus=gpus)
    name = fidx.new_version()
    folder = storage.join(config.out, name)
    info = fidx.manifest(
        built,
        version=name,
        extra={
            "model_version": version,
            "checkpoint": checkpoint,
            "labels": config.labels,
            "neighbours_k": config.neighbours,
        },
    )
    fidx.write_version(built, folder, info)
    del built
    rows = 0
    if config.neighbours and int(info["count"]) < config.neighbours_local_below:
        rows = _neighbours_in_process(files, version=version, folder=folder, config=config)
    elif config.neighbours:
        rows = _neighbours_table(files, version=version, folder=folder, config=config)
    fidx.publish(config.out, name, info, keep=config.keep_versions)
    return IndexResult(
        out=config.out,
        folder=folder,
        info=info,
        neighbour_rows=rows,
        seconds=time.perf_counter() - start,
    )


class NeighbourSearcher:
    """Loads an index version once per actor; maps embedding batches to neighbour rows."""

    def __init__(self, folder: str, *, k: int) -> None:
        self.loaded = fidx.load_version(folder)
        self.k = k

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ids = [str(t) for t in batch["track_id"]]
        embedding = batch["embedding"]
        vectors = (
            embedding
            if isinstance(embedding, np.ndarray) and embedding.ndim == 2
            else np.stack([np.asarray(e, dtype=np.float32) for e in embedding])
        )
        own = np.array([self.loaded.position(t) for t in ids], dtype=np.int64)
        scores, found = self.loaded.search(vectors, self.k, exclude=own)
        valid = found >= 0  # [rows, k]; fewer tracks than k leaves -1 at the end
        offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
        neighbour = pa.StructArray.from_arrays(
            [
                pa.array(self.loaded.track_ids[found[valid]], pa.string()),
                pa.array(scores[valid], pa.float32()),
            ],
            names=["track_id", "score"],
        )
        return pa.table(
            {
                "track_id": pa.array(ids, pa.string()),
                "neighbours": pa.ListArray.from_arrays(pa.array(offsets), neighbour),
            },
            schema=NEIGHBOURS_SCHEMA,
        )


def _neighbours_in_process(
    files: list[str], *, version: str, folder: str, config: fidx.IndexConfig
) -> int:
    """The neighbours table of a small catalog, block by block in this process: the
    same searcher and rows as the actor pool's, without starting Ray for seconds of
    work. One file per block, each written whole."""
    searcher = NeighbourSearcher(folder, k=config.neighbours)
    out = storage.join(folder, fidx.NEIGHBOURS_DIR)
    rows = 0
    blocks = embedding_blocks(files, version=version, batch_size=config.batch_size)
    for i, block in enumerate(blocks):
        table = searcher({"track_id": block.track_ids, "embedding": block.vectors})
        storage.write_parquet_atomic(table, storage.join(out, f"part-{i:05d}.parquet"))
        rows += table.num_rows
    return rows


def _neighbours_table(
    files: list[str], *, version: str, folder: str, config: fidx.IndexConfig
) -> int:
    init_ray(config.address, num_cpus=config.num_cpus)
    check_actor_fit(
        config.actors, config.cpus_per_actor, what="neighbour search", address=config.address
    )
    import ray
    from ray.data.expressions import col

    ds = (
        read_parquet_files(
            storage.with_sizes(files), columns=["track_id", "embedding", "model_version"]
        )
        .filter(expr=col("model_version") == version)
        .select_columns(["track_id", "embedding"])
    )
    out = storage.join(folder, fidx.NEIGHBOURS_DIR)
    out_fs, out_path = storage.resolve(out)
    ds.map_batches(
        NeighbourSearcher,
        fn_constructor_kwargs={"folder": folder, "k": config.neighbours},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=config.cpus_per_actor,
    ).write_parquet(out_path, filesystem=out_fs)
    written = storage.list_files(out, suffix=".parquet")
    return sum(t.num_rows for t in storage.read_parquet_columns(written, ["track_id"]))


def read_neighbours(out: str) -> pa.Table:
    """The published neighbours table (small outputs and tests)."""
    loaded_info = storage.read_json(storage.join(out, fidx.MANIFEST_FILE))
    folder = storage.join(out, loaded_info["version"], fidx.NEIGHBOURS_DIR)
    files = storage.list_files(folder, suffix=".parquet")
    tables = [pq.read_table(storage.resolve(f)[1], filesystem=storage.resolve(f)[0]) for f in files]
    return pa.concat_tables(tables) if tables else NEIGHBOURS_SCHEMA.empty_table()


def embed_audio(uri: str, checkpoint: str, *, expected_version: str | None) -> np.ndarray:
    """The L2-normalised signature ``[dim]`` of one audio file, by ``checkpoint``.

    Raises:
        AudioError: the file cannot be used; GenreflowError: the checkpoint is not the
        model the index was built from.
    """
    from genreflow.ingest import tokenize_track
    from genreflow.label import Labeller

    labeller = Labeller(checkpoint, top_k=1, moments=1, device="cpu")
    if expected_version and labeller.loaded.version != expected_version:
        raise GenreflowError(
            f"checkpoint {checkpoint!r} is model {labeller.loaded.version}, the index holds "
            f"signatures of model {expected_version}: their embeddings are not comparable"
        )
    tokens, duration = tokenize_track(uri, labeller.loaded.spec)
    table = labeller(
        {
            "track_id": np.array(["query"], dtype=object),
            "tokens": tokens[None],
            "duration_s": np.array([duration], dtype=np.float32),
        }
    )
    return np.asarray(table.column("embedding")[0].as_py(), dtype=np.float32)
