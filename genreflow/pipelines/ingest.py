"""Ingest on Ray Data: the catalog streams through decode+tokenize tasks that each write
one shard; only small per-track summaries travel back to the driver.

Why tasks write their own shards: token tensors never cross the object store (a naive
``read_binary_files -> map_batches -> write_parquet`` ships every byte twice and ran at
half the speed of a process pool), every shard lands atomically, and a rerun can tell
finished tracks from unfinished ones.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from genreflow import storage
from genreflow.catalog import Catalog, read_catalog
from genreflow.entry import mark_started
from genreflow.errors import ConfigError
from genreflow.formats.dataset import shard_name
from genreflow.ingest import (
    IngestConfig,
    OutputState,
    drop_late_files,
    finalize,
    ingest_shard,
    prepare_output,
    write_catalog_problems,
)
from genreflow.ray_compat import single_operator_resources
from genreflow.runtime import check_cluster_reachable, group_dataset, init_ray
from genreflow.worklist import WORKLIST_DIR, read_group, write_worklist

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """What one run did."""

    out: str
    tracks_in: int  # catalog rows this run looked at (including refused ones)
    skipped: int  # already done by an earlier run
    rows_written: int
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # the whole run, Ray start included
    process_seconds: float = 0.0  # decoding and writing shards
    manifest: dict[str, Any] = field(default_factory=dict)
    max_error_rate: float = 1.0

    @property
    def errors(self) -> int:
        return sum(self.errors_by_kind.values())

    @property
    def attempted(self) -> int:
        return self.rows_written + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.attempted if self.attempted else 0.0

    @property
    def failed(self) -> bool:
        return self.error_rate > self.max_error_rate

    @property
    def clips_per_s(self) -> float:
        """Decode throughput: tracks attempted per second of the Ray Data stage."""
        done = self.attempted - self.errors_by_kind.get("catalog", 0)
        return done / self.process_seconds if self.process_seconds > 0 else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.errors_by_kind.items())) or "none"
        total = self.manifest.get("counts", {}).get("rows", self.rows_written)
        text = (
            f"ingest -> {self.out}: {self.tracks_in} tracks in, {self.skipped} already done, "
            f"{self.rows_written} rows written ({total} in the dataset), {self.errors} errors "
            f"({kinds}); {self.clips_per_s:.1f} clips/s decoding, {self.seconds:.1f} s in all."
        )
        targets = self.manifest.get("counts", {}).get("by_target")
        if targets:
            text += (
                " Targets: {single_and_multi} single- and multi-label, {single_only} "
                "single-label only, {multi_only} multi-label only, {none} none (kept, "
                "and labelled)."
            ).format(**targets)
        duplicates = self.manifest.get("counts", {}).get("duplicates", 0)
        if duplicates:
            text += (
                f" {duplicates} tracks repeat another's audio and are left out of the splits "
                "(errors/duplicates.parquet names the original of each)."
            )
        if self.failed:
            text += (
                f" FAILED: error rate {self.error_rate:.1%} exceeds max_error_rate "
                f"{self.max_error_rate:.1%}; the rows that succeeded are kept."
            )
        return text


def load_catalog(config: IngestConfig) -> Catalog:
    if not config.catalog:
        raise ConfigError("no catalog given: set catalog=PATH (or --catalog PATH)")
    if not config.out:
        raise ConfigError("no output folder given: set out=DIR (or --out DIR)")
    catalog = read_catalog(config.catalog, config.catalog_options)
    if config.limit is not None:
        catalog.tracks = catalog.tracks.head(config.limit)
    for note, count in sorted(catalog.notes.items()):
        log.warning("catalog %s: %s: %d tracks", config.catalog, note, count)
    return catalog


def run_ingest(config: IngestConfig) -> IngestResult:
    """Ingest ``config.catalog`` into ``config.out`` on Ray (started if needed).

    Every catalog problem (not a table, missing columns) raises before Ray starts;
    every per-track problem becomes an error row.
    """
    start = time.perf_counter()
    catalog = load_catalog(config)
    check_cluster_reachable(config.resources.address)  # before the output folder is touched
    state = prepare_output(config.out, config.spec, catalog, retry_errors=config.retry_errors)
    mark_started()
    errors_by_kind: Counter[str] = Counter()
    problems = write_catalog_problems(config.out, catalog)
    if problems:
        errors_by_kind["catalog"] += problems
    tracks = catalog.tracks
    finished = tracks["track_id"].isin(state.done_ids | state.error_ids)
    todo = tracks[~finished]
    tracks_in, skipped, notes = (
        len(tracks) + len(catalog.problems),
        int(finished.sum()),
        catalog.notes,
    )
    log.info(
        "ingest: %d tracks in catalog, %d already done, %d to do", len(tracks), skipped, len(todo)
    )
    chunks = shard_chunks(todo, config.shard_size)
    ours = {shard_name(c["track_id"].astype(str)) for c in chunks}  # what this run writes
    groups = write_worklist(chunks, _worklist(config))
    # from here the catalog is a file the tasks read: the driver lets go of it
    del catalog, tracks, todo, finished, chunks
    state.done_ids.clear()
    rows_written, process_seconds = 0, 0.0
    if groups:
        init_ray(config.resources.address, num_cpus=config.resources.num_cpus)
        rows_written, process_seconds = _run_shards(groups, config, state, errors_by_kind)
        drop_late_files(config.out, listed=state.files, ours=ours)
    storage.delete_tree(_worklist(config))
    seconds = time.perf_counter() - start
    result = IngestResult(
        out=config.out,
        tracks_in=tracks_in,
        skipped=skipped,
        rows_written=rows_written,
        errors_by_kind=errors_by_kind,
        seconds=seconds,
        process_seconds=process_seconds,
        max_error_rate=config.max_error_rate,
    )
    result.manifest = finalize(
        config.out,
        spec=config.spec,
        vocabulary=state.vocabulary,
        taxonomy=state.taxonomy,
        catalog_uri=config.catalog,
        extra={
            "last_run": {
                "rows_written": rows_written,
                "errors": result.errors,
                "seconds": round(seconds, 3),
                "error_rate_exceeded": result.failed,
                # repaired or dropped at catalog level: bad valence, lyrics, ...
                "catalog_notes": dict(sorted(notes.items())),
            }
        },
    )
    if storage.is_remote(config.out):
        log.info("dataset manifest written to %s", storage.join(config.out, "_dataset.json"))
    return result


def shard_chunks(todo: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """The tracks of each shard: at most ``size``, all of one split (catalog order within
    it), so that training reads a split's shards and no others."""
    splits = todo["split"].fillna("").astype(str)
    chunks = []
    for split in sorted(set(splits)):
        group = todo[(splits == split).to_numpy()]
        chunks += [
            group.iloc[i : i + size].reset_index(drop=True) for i in range(0, len(group), size)
        ]
    return chunks


def _worklist(config: IngestConfig) -> str:
    return storage.join(config.out, WORKLIST_DIR)


def ingest_shards(groups: pd.DataFrame, *, worklist: str, **kwargs: Any) -> pd.DataFrame:
    """The Ray task: each work-list group in ``groups["id"]`` becomes a shard
    (:func:`genreflow.ingest.ingest_shard`); their per-track summaries."""
    frames = [ingest_shard(read_group(worklist, int(i)), **kwargs) for i in groups["id"]]
    return pd.concat(frames, ignore_index=True)


def _run_shards(
    groups: int, config: IngestConfig, state: OutputState, errors_by_kind: Counter[str]
) -> tuple[int, float]:
    """Fan the work list's groups out as one Ray Data task per shard; returns (rows,
    seconds)."""
    rows_written = 0
    start = time.perf_counter()
    with single_operator_resources():  # one operator: no reservation for others
        dataset = group_dataset(groups).map_batches(
            ingest_shards,
            batch_size=None,  # one block = one shard = one task
            batch_format="pandas",
            num_cpus=1,
            fn_kwargs={
                "worklist": _worklist(config),
                "out": config.out,
                "spec": config.spec.to_dict(),
                "vocabulary": state.vocabulary,
                "tags": list(state.taxonomy.titles) if state.taxonomy is not None else None,
                "min_duration_s": config.min_duration_s,
                "allow_silent": config.allow_silent,
            },
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="pandas"):
            assert isinstance(batch, pd.DataFrame)
            rows_written += int((batch["status"] == "ok").sum())
            errors_by_kind.update(batch.loc[batch["status"] == "error", "kind"].tolist())
    return rows_written, time.perf_counter() - start
