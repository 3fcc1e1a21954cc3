"""Labelling on Ray Data: CPU stages (read shards, or decode raw audio) apart from the
model stage (an actor pool, one model copy per actor, on GPUs when asked), and write
tasks beside the actors that turn their rows into files.

Labels folder (``out``): one partition per run, complete only with its run record::

    run-<time>-<id>/labels-*.parquet  label rows (see genreflow.label), named by their tracks
    run-<time>-<id>/errors/*.parquet  tracks that failed to decode
    run-<time>-<id>/_run.json         written last: counts, seconds, model version

A partition without ``_run.json`` is an interrupted run: the next run with the same
checkpoint continues it, keeping its finished files and labelling the tracks they lack,
so every track is labelled exactly once per model version."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from genreflow import checkpoint as ckpt
from genreflow import storage
from genreflow.catalog import Catalog, read_catalog
from genreflow.entry import mark_started
from genreflow.errors import ConfigError
from genreflow.formats.dataset import DATASET_FILE, read_dataset_manifest
from genreflow.formats.labels import (
    RUN_FILE,
    STARTED_FILE,
    compact,
    complete_partitions,
    drop_merged,
    labelled_by,
    partitions,
    track_ids,
    written_by,
)
from genreflow.ingest import is_catalog_problems, remove_late_files, write_catalog_problems
from genreflow.label import (
    LabelConfig,
    Labeller,
    LabelPlan,
    concat_columns,
    decode_for_label,
    model_seconds_per_track,
    plan_label,
    resolve_gpus,
)
from genreflow.runtime import (
    check_actor_fit,
    cluster_gpus,
    data_memory_limit,
    group_dataset,
    init_ray,
    ray_resources,
    read_parquet_files,
)
from genreflow.tokens import TokenSpec, check_same_spec
from genreflow.worklist import WORKLIST_DIR, read_group, write_worklist

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
        storage.delete_tree(stale)
    return chosen


def decode_task_memory(spec: TokenSpec, tracks: int) -> int:
    """Bytes a decode worker holds at most: the interpreter with librosa and soundfile
    loaded, one clip decoded and resampled (about 330 MiB measured by Ray Data for
    30 s clips), plus the float16 tokens of every track of its batch."""
    return 384 * 2**20 + tracks * 2 * math.prod(spec.token_shape)


class LabelSource:
    """What a run labels: an ingest output's shards, or any catalog form decoded on the
    fly. :meth:`tokens` makes either one dataset of decoded tokens for the model actors
    (a catalog's rows go to a work list, and the source lets go of them)."""

    def __init__(self, config: LabelConfig, spec: TokenSpec, checkpoint: str) -> None:
        self.uri = config.input
        self.spec = spec
        self.manifest: dict[str, Any] | None = None
        self.catalog: Catalog | None = None
        self.kind: Literal["shards", "audio"] = "audio"
        if storage.exists(storage.join(config.input, DATASET_FILE)):
            self.kind = "shards"
            self.manifest = read_dataset_manifest(config.input)
            check_same_spec(
                spec,
                TokenSpec.from_dict(self.manifest["token_spec"]),
                a_name=f"checkpoint {checkpoint!r}",
                b_name=f"shards {config.input!r}",
            )
        else:
            self.catalog = read_catalog(config.input, config.catalog_options)
        self.tracks = (
            int(self.manifest["counts"]["rows"])
            if self.manifest is not None
            else len(self.catalog.tracks)  # type: ignore[union-attr]
        )

    @property
    def dataset_tags(self) -> list[str] | None:
        """The multi-label genres the shards' ``tag_idx`` index (None from a catalog)."""
        return self.manifest["labels"].get("tags") if self.manifest is not None else None

    def tokens(
        self, config: LabelConfig, plan: LabelPlan, *, skip: set[str], partition: str, attempt: str
    ) -> tuple[Any, int]:
        """The dataset of decoded tokens of the tracks not in ``skip``, and their count.
        A catalog's refused rows and undecodable tracks become error rows of ``partition``
        (the decode tasks' files named by the run ``attempt``)."""
        if self.kind == "shards":
            columns = ["track_id", "tokens", "duration_s", "lyrics", "genre", "split"]
            columns += _optional_shard_columns(self.uri, ["clip_start_s", "tag_idx"])
            ds = read_parquet_files(
                storage.file_sizes(storage.join(self.uri, "shards"), suffix=".parquet"),
                columns=columns,
                num_cpus=config.resources.read_cpus,
                concurrency=plan.read_tasks,
                drop_ids=skip,  # labelled by this model version in an earlier run
            )
            return ds, self.tracks - len(skip)
        assert self.catalog is not None, "a catalog's tokens are made once"
        errors = storage.join(partition, "errors")
        write_catalog_problems(partition, self.catalog)  # into errors/
        tracks = self.catalog.tracks[~self.catalog.tracks["track_id"].isin(skip)]
        size = config.resources.shard_size
        chunks = [tracks.iloc[i : i + size] for i in range(0, len(tracks), size)]
        worklist = storage.join(partition, WORKLIST_DIR)
        groups = write_worklist(chunks, worklist)
        self.catalog = None  # the tasks read the work list: the driver lets go of the rows
        ds = group_dataset(groups).map_batches(
            decode_for_label_groups,
            batch_size=None,
            batch_format="pandas",
            num_cpus=1,
            # Decoding declares its memory: remote arguments unlike the model actor's
            # keep it a stage of its own, on every free CPU. Ray Data otherwise fuses a
            # task stage into the actor stage after it, and one actor decodes alone.
            memory=decode_task_memory(self.spec, size),
            fn_kwargs={
                "worklist": worklist,
                "spec": self.spec.to_dict(),
                "errors_dir": errors,
                "attempt": attempt,
                "min_duration_s": config.min_duration_s,
                "allow_silent": config.allow_silent,
            },
        )
        return ds, len(tracks)


def decode_for_label_groups(
    groups: pd.DataFrame, *, worklist: str, **kwargs: Any
) -> dict[str, np.ndarray]:
    """The Ray task: the work-list groups in ``groups["id"]`` decoded for the model actors
    (:func:`genreflow.label.decode_for_label`)."""
    parts = [decode_for_label(read_group(worklist, int(i)), **kwargs) for i in groups["id"]]
    return concat_columns(parts)


def run_label(config: LabelConfig) -> LabelResult:
    """Label ``config.input`` with ``config.checkpoint`` into a new partition of ``config.out``.

    The config is read, never rewritten: what the run decides from it and the cluster is
    a :class:`LabelPlan`, logged as one line and kept in the partition's run record.
    """
    start = time.perf_counter()
    for key in ("checkpoint", "input", "out"):
        if not getattr(config, key):
            raise ConfigError(f"no {key} given: set {key}=... (or --{key} ...)")
    checkpoint = ckpt.best_of_run(config.checkpoint)
    loaded = ckpt.load_model(checkpoint)
    version = loaded.version
    source = LabelSource(config, loaded.spec, checkpoint)
    started = {"model_version": version, "input": config.input, "incremental": config.incremental}
    opened = _open_partition(config, started)
    partition, kept, done, earlier = opened.path, opened.kept, opened.done, opened.earlier
    init_ray(config.resources.address, num_cpus=config.resources.num_cpus)
    plan = _plan(config, source, loaded.model)
    del loaded
    log.info("%s", plan.line())
    check_actor_fit(
        plan.actors,
        plan.cpus_per_actor,
        what="labelling",
        address=config.resources.address,
        feed_cpus=config.resources.read_cpus if source.kind == "shards" else 1.0,
        gpus_per_actor=plan.gpus_per_actor,
    )
    mark_started()
    run_id = partition.rstrip("/").rsplit("/", 1)[-1]
    storage.write_json_atomic(storage.join(partition, STARTED_FILE), {"run": run_id, **started})
    # before any dataset is made: each copies Ray Data's context
    with data_memory_limit(config.resources.inflight_gb, block_mb=config.resources.block_mb):
        attempt = uuid.uuid4().hex[:8]  # names the files this run writes
        ds, todo = source.tokens(
            config, plan, skip=done | kept, partition=partition, attempt=attempt
        )
        if todo:
            _write_labels(ds, config, plan, checkpoint, source.dataset_tags, partition, attempt)
            _drop_late_files(partition, trusted=opened.kept_files, attempt=attempt)
    storage.delete_tree(storage.join(partition, WORKLIST_DIR))
    skipped = source.tracks - todo - len(kept - done)  # kept: this run's, done before a cut
    labelled = sum(t.num_rows for t in storage.read_parquet_columns(
        storage.list_files(partition, suffix=".parquet"), ["track_id"]
    ))  # fmt: skip
    error_files = storage.list_files(storage.join(partition, "errors"), suffix=".parquet")
    errors = sum(t.num_rows for t in storage.read_parquet_columns(error_files, ["track_id"]))
    result = LabelResult(
        out=config.out,
        partition=partition,
        model_version=version,
        tracks_in=source.tracks,
        skipped=skipped,
        labelled=labelled,
        errors=errors,
        seconds=time.perf_counter() - start,
        max_error_rate=config.max_error_rate,
    )
    if config.incremental and not (labelled or errors or kept):
        # a nightly run with nothing new leaves the labels as they were: a year of such
        # nights adds no empty partitions for every reader to list
        storage.delete_tree(partition)
        log.info("incremental: every track is labelled by %s already; nothing written", version)
        return dataclasses.replace(result, partition="")
    _finish_partition(config, result, checkpoint, plan, continued=len(kept), earlier=earlier)
    if config.incremental:
        merged = compact(
            config.out, version, after=config.compact_after, rows_per_file=config.rows_per_file
        )
        if merged:
            log.info("compacted the finished partitions of %s into %s", version, merged)
    return dataclasses.replace(result, samples=_samples(partition))


@dataclass(frozen=True)
class OpenPartition:
    """The partition a run writes and what it starts from."""

    path: str  # an interrupted run's partition of the same model and input, or a new one
    kept: set[str]  # tracks it holds already (labelled or error rows)
    kept_files: set[str]  # the label files they are in, as listed when the run started
    done: set[str]  # tracks earlier runs labelled with this model version (incremental)
    earlier: list[str]  # the earlier complete partitions


def _open_partition(config: LabelConfig, started: dict[str, Any]) -> OpenPartition:
    """The partition this run writes (see :class:`OpenPartition`)."""
    drop_merged(config.out)  # what a compaction cut short left behind
    partition = _continue_or_clear(config.out, started)
    earlier = complete_partitions(config.out)
    done = labelled_by(earlier, started["model_version"]) if config.incremental else set()
    kept: set[str] = set()
    kept_files: set[str] = set()
    if partition is not None:  # an interrupted run of the same model and input
        labelled = storage.list_files(partition, suffix=".parquet")
        errors = storage.list_files(storage.join(partition, "errors"), suffix=".parquet")
        kept_files = set(labelled) | set(errors)
        # a refused catalog row is no track's outcome: a repeated id's first row is a track
        failed = [f for f in errors if not is_catalog_problems(f)]
        kept = track_ids(labelled) | track_ids(failed)
        if kept & done:  # not what that run could have written: start over
            log.warning("removing %s: it repeats tracks of finished runs", partition)
            storage.delete_tree(partition)
            partition, kept, kept_files = None, set(), set()
    if partition is None:
        run_id = f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        return OpenPartition(storage.join(config.out, run_id), kept, kept_files, done, earlier)
    log.info("continuing the interrupted run %s: %d tracks done, kept", partition, len(kept))
    return OpenPartition(partition, kept, kept_files, done, earlier)


def _drop_late_files(partition: str, *, trusted: set[str], attempt: str) -> None:
    """Remove the label and error files that neither this run (``attempt``) wrote nor
    were there when it started (:func:`genreflow.ingest.remove_late_files`)."""
    found = storage.list_files(partition, suffix=".parquet")
    found += storage.list_files(storage.join(partition, "errors"), suffix=".parquet")
    remove_late_files(found, kept=lambda f: f in trusted or written_by(f, attempt))


def _plan(config: LabelConfig, source: LabelSource, model: Any) -> LabelPlan:
    """The run's :class:`LabelPlan` on the cluster Ray is connected to. From raw audio on
    CPUs the model is timed first: the cores are shared by what each side costs."""
    present, possible = cluster_gpus()
    gpus = resolve_gpus(config, present=present, possible=possible)
    model_s = None
    if source.kind == "audio" and gpus == 0 and config.resources.actors is None:
        model_s = model_seconds_per_track(model, source.spec)
    return plan_label(
        config,
        source=source.kind,
        tracks=source.tracks,
        cluster_cpus=ray_resources().get("CPU", 0.0),
        present_gpus=present,
        possible_gpus=possible,
        model_s_per_track=model_s,
    )


def _finish_partition(
    config: LabelConfig,
    result: LabelResult,
    checkpoint: str,
    plan: LabelPlan,
    *,
    continued: int,
    earlier: list[str],
) -> None:
    """Write the run record that marks the partition complete; a full (not incremental)
    run then replaces what earlier runs wrote."""
    record = {
        "run": result.partition.rstrip("/").rsplit("/", 1)[-1],
        "model_version": result.model_version,
        "checkpoint": checkpoint,
        "input": config.input,
        "incremental": config.incremental,
        "tracks_in": result.tracks_in,
        "skipped": result.skipped,
        "labelled": result.labelled,
        "continued": continued,  # tracks an interrupted attempt of this run had done
        "errors": result.errors,
        "seconds": round(result.seconds, 3),
        "plan": dataclasses.asdict(plan),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.makedirs(result.partition)
    storage.write_json_atomic(storage.join(result.partition, RUN_FILE), record)
    if not config.incremental:
        for old in earlier:
            storage.delete_tree(old)


def _write_labels(
    ds: Any,
    config: LabelConfig,
    plan: LabelPlan,
    checkpoint: str,
    dataset_tags: list[str] | None,
    partition: str,
    attempt: str,
) -> None:
    """Run the model actors over ``ds`` and write their rows into ``partition``."""
    import ray

    from genreflow.pipelines.label_files import LabelFiles

    labels = ds.map_batches(
        Labeller,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "top_k": config.top_k,
            "moments": config.moments,
            "device": plan.device,
            "threads": plan.torch_threads,
            "model_batch": plan.model_batch,
            "dataset_tags": dataset_tags,
        },
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )
    # Written where the rows are made: each write task takes the actors' blocks on its
    # node and writes one file of at least rows_per_file rows.
    labels.write_datasink(
        LabelFiles(partition, config.rows_per_file, attempt=attempt),
        ray_remote_args={"num_cpus": config.resources.write_cpus},
    )


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
