"""Labelling on Ray Data: CPU stages (read shards, or decode raw audio) apart from the
model stage (an actor pool, one model copy per actor, on GPUs when asked).

Labels folder (``out``): one partition per run, complete only with its run record::

    run-<time>-<id>/part-*.parquet   label rows (see genreflow.label)
    run-<time>-<id>/errors/*.parquet tracks that failed to decode
    run-<time>-<id>/_run.json        written last: counts, seconds, model version

A partition without ``_run.json`` is an interrupted run: the next run deletes it and
does its tracks again, so every track is labelled exactly once per model version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from genreflow import checkpoint as ckpt
from genreflow import storage
from genreflow.catalog import Catalog, read_catalog
from genreflow.entry import mark_started
from genreflow.errors import ConfigError
from genreflow.formats.dataset import DATASET_FILE, read_dataset_manifest
from genreflow.formats.labels import (
    RUN_FILE,
    STARTED_FILE,
    complete_partitions,
    labelled_by,
    partitions,
    track_ids,
)
from genreflow.ingest import write_catalog_problems
from genreflow.label import (
    LabelConfig,
    Labeller,
    decode_for_label,
    model_seconds_per_track,
    plan_actors,
    plan_reads,
    resolve_gpus,
)
from genreflow.runtime import (
    check_actor_fit,
    cluster_gpus,
    data_memory_limit,
    init_ray,
    ray_resources,
    read_parquet_files,
)
from genreflow.tokens import TokenSpec, check_same_spec

log = logging.getLogger(__name__)


@dataclass
class LabelResult:
    out: str
    partition: str
    model_version: str
    tracks_in: int
    skipped: int
    labelled: int
    errors: int
    seconds: float
    max_error_rate: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        attempted = self.labelled + self.errors
        return attempted > 0 and self.errors / attempted > self.max_error_rate

    def summary(self) -> str:
        where = self.partition or f"{self.out} (nothing new: no partition written)"
        text = (
            f"label -> {where}: {self.tracks_in} tracks in, {self.skipped} already "
            f"labelled by {self.model_version}, {self.labelled} labelled, {self.errors} errors, "
            f"{self.labelled / self.seconds if self.seconds else 0:.1f} tracks/s over "
            f"{self.seconds:.1f} s."
        )
        if self.failed:
            text += f" FAILED: error rate above max_error_rate {self.max_error_rate:.0%}."
        return text


def _delete_tree(uri: str) -> None:
    fs, path = storage.resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def _continue_or_clear(out: str, started: dict[str, Any]) -> str | None:
    """The newest interrupted partition of ``out`` whose run labelled with the same model
    version and input (``started``), to continue; every other interrupted partition is
    removed (its files would be labelled again, perhaps by another model)."""
    unfinished = [p for p in partitions(out) if not storage.exists(storage.join(p, RUN_FILE))]
    chosen = None
    for stale in reversed(unfinished):
        record_uri = storage.join(stale, STARTED_FILE)
        record = storage.read_json(record_uri) if storage.exists(record_uri) else {}
        if chosen is None and all(record.get(k) == v for k, v in started.items()):
            chosen = stale
            continue
        log.warning("removing %s: an interrupted run left it without %s", stale, RUN_FILE)
        _delete_tree(stale)
    return chosen


def decode_task_memory(spec: TokenSpec, tracks: int) -> int:
    """Bytes a decode worker holds at most: the interpreter with librosa and soundfile
    loaded, one clip decoded and resampled (about 330 MiB measured by Ray Data for
    30 s clips), plus the float16 tokens of every track of its batch."""
    return 384 * 2**20 + tracks * 2 * math.prod(spec.token_shape)


def run_label(config: LabelConfig) -> LabelResult:
    """Label ``config.input`` with ``config.checkpoint`` into a new partition of ``config.out``."""
    start = time.perf_counter()
    for key in ("checkpoint", "input", "out"):
        if not getattr(config, key):
            raise ConfigError(f"no {key} given: set {key}=... (or --{key} ...)")
    config = dataclasses.replace(config, checkpoint=ckpt.best_of_run(config.checkpoint))
    loaded = ckpt.load_model(config.checkpoint)
    spec, version = loaded.spec, loaded.version
    from_shards = storage.exists(storage.join(config.input, DATASET_FILE))
    catalog = None
    if from_shards:
        manifest = read_dataset_manifest(config.input)
        check_same_spec(
            spec,
            TokenSpec.from_dict(manifest["token_spec"]),
            a_name=f"checkpoint {config.checkpoint!r}",
            b_name=f"shards {config.input!r}",
        )
    else:
        catalog = read_catalog(
            config.input,
            audio_dir=config.audio_dir,
            fma_subset=config.fma_subset,
            require_genre=False,
            audio_root=config.audio_root,
        )
    started = {
        "model_version": version,
        "input": config.input,
        "incremental": config.incremental,
    }
    partition = _continue_or_clear(config.out, started)
    earlier = complete_partitions(config.out)
    done = labelled_by(earlier, version) if config.incremental else set()
    kept: set[str] = set()
    if partition is not None:  # an interrupted run of the same model and input
        kept = track_ids(storage.list_files(partition, suffix=".parquet"))
        kept |= track_ids(storage.list_files(storage.join(partition, "errors"), suffix=".parquet"))
        if kept & done:  # not what that run could have written: start over
            log.warning("removing %s: it repeats tracks of finished runs", partition)
            _delete_tree(partition)
            partition, kept = None, set()
    if partition is None:
        run_id = f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        partition = storage.join(config.out, run_id)
    else:  # keep what the interrupted run finished; label the rest
        run_id = partition.rstrip("/").rsplit("/", 1)[-1]
        log.info("continuing the interrupted run %s: %d tracks done, kept", run_id, len(kept))

    init_ray(config.resources.address, num_cpus=config.resources.num_cpus)
    resources = ray_resources()
    present, possible = cluster_gpus()
    config = resolve_gpus(config, present=present, possible=possible)
    model_s = None
    if not from_shards and config.resources.gpu_share == 0 and config.resources.actors is None:
        model_s = model_seconds_per_track(loaded.model, spec)  # shares the CPUs with decoding
        log.info("the model takes %.3f s a track on one CPU thread", model_s)
    del loaded
    actors, cpus_per_actor = plan_actors(
        config,
        cluster_cpus=resources.get("CPU", 0.0),
        cluster_gpus=present or float(bool(possible)),
        from_shards=from_shards,
        model_s_per_track=model_s,
        tracks=len(catalog.tracks) if catalog is not None else int(manifest["counts"]["rows"]),
    )
    check_actor_fit(
        actors,
        cpus_per_actor,
        what="labelling",
        address=config.resources.address,
        feed_cpus=config.resources.read_cpus if from_shards else 1.0,
        gpus_per_actor=config.resources.gpu_share,
    )
    mark_started()
    storage.write_json_atomic(storage.join(partition, STARTED_FILE), {"run": run_id, **started})
    log.info(
        "labelling with %d model actor(s), %g CPU(s)%s each",
        actors,
        cpus_per_actor,
        f" and {config.resources.gpu_share:g} GPU" if config.resources.gpu_share else "",
    )
    planned = dataclasses.replace(config.resources, actors=actors, cpus_per_actor=cpus_per_actor)
    config = dataclasses.replace(config, resources=planned)
    # before any dataset is made: each copies Ray Data's context
    with data_memory_limit(config.resources.inflight_gb, block_mb=config.resources.block_mb):
        tracks_in, skipped, labelled = _write_labels(
            config, spec, catalog, manifest if from_shards else None, done | kept, partition
        )
    skipped -= len(kept - done)  # kept tracks were this run's, done before it was cut
    labelled = sum(t.num_rows for t in storage.read_parquet_columns(
        storage.list_files(partition, suffix=".parquet"), ["track_id"]
    ))  # fmt: skip
    error_files = storage.list_files(storage.join(partition, "errors"), suffix=".parquet")
    errors = sum(t.num_rows for t in storage.read_parquet_columns(error_files, ["track_id"]))
    seconds = time.perf_counter() - start
    if config.incremental and not (labelled or errors or kept):
        # a nightly run with nothing new leaves the labels as they were: a year of such
        # nights adds no empty partitions for every reader to list
        _delete_tree(partition)
        log.info("incremental: every track is labelled by %s already; nothing written", version)
        return LabelResult(
            out=config.out,
            partition="",
            model_version=version,
            tracks_in=tracks_in,
            skipped=skipped,
            labelled=0,
            errors=0,
            seconds=seconds,
            max_error_rate=config.max_error_rate,
        )
    record = {
        "run": run_id,
        "model_version": version,
        "checkpoint": config.checkpoint,
        "input": config.input,
        "incremental": config.incremental,
        "tracks_in": tracks_in,
        "skipped": skipped,
        "labelled": labelled,
        "continued": len(kept),  # tracks an interrupted attempt of this run had done
        "errors": errors,
        "seconds": round(seconds, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.makedirs(partition)
    storage.write_json_atomic(storage.join(partition, RUN_FILE), record)
    if not config.incremental:  # a full run replaces what earlier runs wrote
        for old in earlier:
            _delete_tree(old)
    return LabelResult(
        out=config.out,
        partition=partition,
        model_version=version,
        tracks_in=tracks_in,
        skipped=skipped,
        labelled=labelled,
        errors=errors,
        seconds=seconds,
        max_error_rate=config.max_error_rate,
        samples=_samples(partition),
    )


def _write_labels(
    config: LabelConfig,
    spec: TokenSpec,
    catalog: Catalog | None,
    manifest: dict[str, Any] | None,
    done: set[str],
    partition: str,
) -> tuple[int, int, int]:
    """Run the label dataset into ``partition``: (tracks in, skipped, labelled)."""
    import ray

    if catalog is not None:
        tracks = catalog.tracks[~catalog.tracks["track_id"].isin(done)]
        tracks_in = len(catalog.tracks)
        write_catalog_problems(storage.join(partition, "errors"), catalog, set())
        chunks = [
            tracks.iloc[i : i + config.resources.shard_size].reset_index(drop=True)
            for i in range(0, len(tracks), config.resources.shard_size)
        ]
        todo = len(tracks)
        ds = ray.data.from_pandas(chunks or [tracks]).map_batches(
            decode_for_label,  # type: ignore[arg-type]
            batch_size=None,
            batch_format="pandas",
            num_cpus=1,
            # Decoding declares its memory: remote arguments unlike the model actor's
            # keep it a stage of its own, on every free CPU. Ray Data otherwise fuses a
            # task stage into the actor stage after it, and one actor decodes alone.
            memory=decode_task_memory(spec, config.resources.shard_size),
            fn_kwargs={
                "spec": spec.to_dict(),
                "errors_dir": storage.join(partition, "errors"),
                "min_duration_s": config.min_duration_s,
                "allow_silent": config.allow_silent,
            },
        )
    else:
        assert manifest is not None  # from shards
        columns = ["track_id", "tokens", "duration_s", "lyrics", "genre", "split"]
        columns += _optional_shard_columns(config.input, ["clip_start_s", "tag_idx"])
        ds = read_parquet_files(
            storage.file_sizes(storage.join(config.input, "shards"), suffix=".parquet"),
            columns=columns,
            num_cpus=config.resources.read_cpus,
            concurrency=plan_reads(config, actors=config.resources.actors or 1),
            drop_ids=done,  # labelled by this model version in an earlier run
        )
        tracks_in = int(manifest["counts"]["rows"])
        todo = tracks_in - len(done)
    skipped = tracks_in - todo
    labelled = 0
    if todo:
        use_gpu = config.resources.gpu_share > 0
        cpus = config.resources.cpus_per_actor or 1.0  # set by run_label's plan
        labels = ds.map_batches(
            Labeller,
            fn_constructor_kwargs={
                "checkpoint": config.checkpoint,
                "top_k": config.top_k,
                "moments": config.moments,
                "device": "cuda" if use_gpu else config.resources.device,
                "threads": config.resources.torch_threads or max(1, math.ceil(cpus)),
                "model_batch": config.resources.model_batch,
                "dataset_tags": manifest["labels"].get("tags") if manifest else None,
            },
            batch_size=config.resources.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=config.resources.actors),
            num_cpus=cpus,
            num_gpus=config.resources.gpu_share if use_gpu else None,
        )
        # The job's own process writes the label files as the rows stream in: label rows
        # are small (about 350 bytes a track), and a write stage of tasks started a
        # worker process for each file once the actors held every idle worker, its
        # 140 MiB heap coming and going beside them (bench/RESULTS.md). Each file is
        # written whole or not at all; the run record marks the partition complete.
        first = len(storage.list_files(partition, suffix=".parquet"))  # a continued run's
        for i, batch in enumerate(
            labels.iter_batches(batch_size=config.rows_per_file, batch_format="pyarrow"),
            start=first,
        ):
            assert isinstance(batch, pa.Table)
            storage.write_parquet_atomic(batch, storage.join(partition, f"labels-{i:05d}.parquet"))
            labelled += batch.num_rows
    return tracks_in, skipped, labelled


def _samples(partition: str, n: int = 3) -> list[dict[str, Any]]:
    files = storage.list_files(partition, suffix=".parquet")[:1]
    rows: list[dict[str, Any]] = []
    for table in storage.read_parquet_columns(
        files, ["track_id", "genre", "genre_prob", "signature_moments"]
    ):
        rows.extend(table.slice(0, n).to_pylist())
    return rows[:n]


def _optional_shard_columns(data: str, wanted: list[str]) -> list[str]:
    """The columns of ``wanted`` a dataset's shards have (older datasets lack some)."""
    import pyarrow.parquet as pq

    shards = storage.list_files(storage.join(data, "shards"), suffix=".parquet")
    if not shards:
        return []
    fs, path = storage.resolve(shards[0])
    names = set(pq.read_schema(path, filesystem=fs).names)
    return [c for c in wanted if c in names]
