"""Labelling core: the model actor that turns token batches into label rows. No Ray here.

A label row: ``track_id``, ``genre`` (top-1) and ``genre_prob``, ``genre_topk`` (genre +
probability, best first), ``mood`` and ``mood_probs`` where the model has a mood head,
``token_weights`` (attention per token), ``signature_moments`` (start/end seconds within
the track of the most attended tokens, with their weights), ``embedding`` (the
signature, float32, L2-normalised), ``true_genre`` (the catalog's genre, where known),
``split`` (train/val/test, from the catalog or the shards, where known), ``model_version``,
``labelled_at``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from genreflow import checkpoint as ckpt
from genreflow import storage
from genreflow.catalog import CatalogOptions
from genreflow.config import path_field
from genreflow.decode import decode_tokens, error_table
from genreflow.errors import ConfigError
from genreflow.formats.labels import LABEL_FILE_ROWS, LABELS_SCHEMA, error_file_name
from genreflow.models.base import inference_model
from genreflow.multilabel import consistent_tags
from genreflow.resources import LabelResources
from genreflow.runtime import wants_gpus
from genreflow.tokens import TokenSpec


@dataclass(frozen=True)
class LabelConfig:
    """Settings of one labelling run (``configs/label.yaml``)."""

    checkpoint: str = path_field("input")  # a checkpoint folder (metrics.json's best_checkpoint)
    input: str = path_field("input")  # an ingest output folder, or any catalog form
    out: str = path_field("output")  # labels folder: one partition per run
    top_k: int = 3
    moments: int = 3  # signature moments per track
    incremental: bool = False  # skip tracks this model version already labelled
    rows_per_file: int = LABEL_FILE_ROWS  # label rows per output file, each written whole;
    # an interrupted run keeps its finished files and the next run continues it
    min_duration_s: float = 1.0
    allow_silent: bool = False
    max_error_rate: float = 0.2
    compact_after: int = 8  # incremental runs: once a model version has more finished
    # partitions than this, all but the largest are merged into one (0: never)
    catalog_options: CatalogOptions = field(default_factory=CatalogOptions)  # when input is
    # a catalog: read as ingest reads it
    resources: LabelResources = field(default_factory=LabelResources)

    def __post_init__(self) -> None:
        for name in ("top_k", "moments", "rows_per_file"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.compact_after < 0:
            raise ConfigError(f"compact_after must be >= 0 (0: never), got {self.compact_after}")


def resolve_gpus(config: LabelConfig, *, present: float, possible: float | None) -> float:
    """GPUs per actor as a number for this cluster (``gpus_per_actor=auto``: one where it
    has GPUs or its autoscaler can start them, ``possible``, else 0: CPU actors)."""
    if config.resources.gpus_per_actor != "auto":
        return float(config.resources.gpus_per_actor)
    on_gpus = wants_gpus("auto", present=present, possible=possible, what="labelling")
    return 1.0 if on_gpus else 0.0


@dataclass(frozen=True)
class LabelPlan:
    """How one run labels, decided once from its config and the cluster it found (see
    :func:`plan_label`). The config stays as the user wrote it; everything after
    planning reads the plan."""

    source: Literal["shards", "audio"]  # an ingest output, or a catalog decoded on the fly
    tracks: int  # tracks the input holds
    actors: int  # model actors, one model copy each
    cpus_per_actor: float
    gpus_per_actor: float  # 0: CPU actors
    device: str  # the actors' torch device
    torch_threads: int  # per actor
    read_tasks: int  # shard readers (shards), or 0 (audio: decode tasks on free CPUs)
    batch_size: int  # tracks per model-actor call
    model_batch: int | None  # tracks per forward pass within a call (None: the call's)
    model_s_per_track: float | None = None  # measured on one CPU thread, where it mattered

    def line(self) -> str:
        """The plan as one log line."""
        feed = (
            f"{self.read_tasks} shard reader(s)"
            if self.source == "shards"
            else "decode tasks on the free CPUs"
        )
        gpus = f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        timed = (
            f"; model {self.model_s_per_track * 1000:.1f} ms/track on one thread"
            if self.model_s_per_track is not None
            else ""
        )
        return (
            f"label plan: {self.tracks} tracks from {self.source}, {feed} -> "
            f"{self.actors} model actor(s) x ({self.cpus_per_actor:g} CPU{gpus}, "
            f"{self.device}, {self.torch_threads} thread(s)), {self.batch_size} tracks a call"
            f"{timed}"
        )


def plan_label(
    config: LabelConfig,
    *,
    source: Literal["shards", "audio"],
    tracks: int,
    cluster_cpus: float,
    present_gpus: float,
    possible_gpus: float | None,
    model_s_per_track: float | None = None,
) -> LabelPlan:
    """The run's plan: GPUs per actor (:func:`resolve_gpus`), the actor pool
    (:func:`plan_actors`), the shard readers (:func:`plan_reads`) and each actor's device
    and threads; the config's values wherever it sets them."""
    res = config.resources
    gpus = resolve_gpus(config, present=present_gpus, possible=possible_gpus)
    actors, cpus = plan_actors(
        config,
        cluster_cpus=cluster_cpus,
        cluster_gpus=present_gpus or float(bool(possible_gpus)),
        gpus_per_actor=gpus,
        from_shards=source == "shards",
        model_s_per_track=model_s_per_track,
        tracks=tracks,
    )
    return LabelPlan(
        source=source,
        tracks=tracks,
        actors=actors,
        cpus_per_actor=cpus,
        gpus_per_actor=gpus,
        device="cuda" if gpus > 0 else res.device,
        torch_threads=res.torch_threads or max(1, math.ceil(cpus)),
        read_tasks=plan_reads(config, actors=actors, gpus_per_actor=gpus)
        if source == "shards"
        else 0,
        batch_size=res.batch_size,
        model_batch=res.model_batch,
        model_s_per_track=model_s_per_track,
    )


# What a raw-audio run spends on one track before the model, on one core: decode,
# resample and log-mel tokens of a 30 s clip (47 + 9 + 24 ms, bench/RESULTS.md, Ingest).
DECODE_S_PER_TRACK = 0.08


def model_seconds_per_track(model: torch.nn.Module, spec: TokenSpec, *, tracks: int = 2) -> float:
    """What one track costs ``model`` (as a labeller runs it) on one CPU thread: a
    forward pass over ``tracks`` silent tracks, timed after one pass to warm up. A tiny
    model takes milliseconds, the pretrained musicnn front end about a second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = inference_model(copy.deepcopy(model), torch.device("cpu"))
        silent = torch.full((tracks, *spec.token_shape), -100.0)
        with torch.inference_mode():
            net(silent[:1])
            started = time.perf_counter()
            net(silent)
            return (time.perf_counter() - started) / tracks
    finally:
        torch.set_num_threads(threads)


def plan_actors(
    config: LabelConfig,
    *,
    cluster_cpus: float,
    cluster_gpus: float,
    gpus_per_actor: float,
    from_shards: bool,
    model_s_per_track: float | None = None,
    tracks: int | None = None,
) -> tuple[int, float]:
    """How many model actors and how many CPUs each: the config's values where set.

    On GPUs: one actor per ``gpus_per_actor`` of the cluster's GPUs (``cluster_gpus``:
    those up now, or one where the autoscaler has yet to start any), one CPU each. On
    CPUs an actor runs one torch thread, so it reserves half a CPU and the tasks that
    feed it (shard reads, at ``read_cpus`` each) run beside it. Several single-threaded
    actors keep every core busy where one multi-threaded actor would stall its threads
    whenever a read takes a core. From shards: one actor per CPU, leaving at least one
    CPU to the reads. From raw audio the cores are shared between decoding and the
    model in proportion to what each costs a track (``model_s_per_track``, measured by
    :func:`model_seconds_per_track`, against :data:`DECODE_S_PER_TRACK`): about one
    actor per ten CPUs for the tiny models, nearly every CPU for musicnn. Unmeasured:
    one per ten. A planned pool never outnumbers the calls of ``batch_size`` tracks that
    ``tracks`` make (an actor with nothing to label only costs its start).
    """
    if config.resources.actors is not None:
        cpus_set = config.resources.cpus_per_actor
        return config.resources.actors, cpus_set or (1.0 if gpus_per_actor else 0.5)
    if gpus_per_actor > 0:
        actors = max(1, int(cluster_gpus / gpus_per_actor))
        cpus = config.resources.cpus_per_actor or 1.0
    else:
        cpus = config.resources.cpus_per_actor or 0.5
        if from_shards:
            actors = max(1, min(int(cluster_cpus), int((cluster_cpus - 1) / cpus)))
        elif model_s_per_track is None:
            actors = max(1, round(cluster_cpus / 10))
        else:
            share = model_s_per_track / (model_s_per_track + DECODE_S_PER_TRACK)
            actors = max(1, min(int(cluster_cpus), round(cluster_cpus * share)))
    if tracks is not None:
        actors = max(1, min(actors, math.ceil(tracks / config.resources.batch_size)))
    return actors, cpus


def plan_reads(config: LabelConfig, *, actors: int, gpus_per_actor: float = 0.0) -> int:
    """How many shard readers (long-lived actors) run: the config's value where set.

    A reader makes about 500 tracks/s of blocks, a CPU actor labels about 100, so one
    reader per two CPU actors keeps them fed; a GPU actor labels thousands, so it gets
    two. Without a limit Ray Data starts a read per free quarter CPU as the job starts,
    and on a small machine those reads (each a worker process to start) take the cores
    the model actors need to start: on a small node the actors' first call came 22 s
    into a run instead of 13 s (bench/RESULTS.md).
    """
    if config.resources.read_tasks is not None:
        return config.resources.read_tasks
    if gpus_per_actor > 0:
        return 2 * actors
    return max(1, actors // 2)


def signature_moments(
    weights: np.ndarray,
    spec: TokenSpec,
    duration_s: float,
    *,
    count: int,
    offset_s: float = 0.0,
) -> list[dict[str, float]]:
    """The ``count`` most attended tokens as moments inside the track, best first.

    Args:
        weights: ``[n_tokens]`` attention weights of one track.
        duration_s: layout clip: audio actually present in the clip, moments are
            clipped to it and tokens that start after it (padding) are never moments;
            layout track: the track's length.
        offset_s: layout clip: where the clip starts in the track (moments are in the
            track's time).
    """
    times = spec.token_times_in_track(duration_s=duration_s, offset_s=offset_s)
    if spec.token_layout == "track":
        end_of_track = float(duration_s) if duration_s > 0 else float(times[-1, 1])
    else:
        present = min(float(duration_s), spec.clip_s) if duration_s > 0 else spec.clip_s
        end_of_track = offset_s + present
    order = np.argsort(-weights, kind="stable")
    moments = []
    for t in order:
        start, end = float(times[t, 0]), min(float(times[t, 1]), end_of_track)
        if start >= end_of_track:
            continue
        moments.append(
            {"start_s": round(start, 3), "end_s": round(end, 3), "weight": float(weights[t])}
        )
        if len(moments) == count:
            break
    return moments


class Labeller:
    """Loads a checkpoint once per actor; labels batches of tokens (Ray's ``map_batches``
    hands it ``dict[str, np.ndarray]`` batches with ``track_id``, ``tokens``,
    ``duration_s`` and, for lyrics models, ``lyrics``)."""

    def __init__(
        self,
        checkpoint: str,
        *,
        top_k: int,
        moments: int,
        device: str = "auto",
        threads: int | None = None,
        model_batch: int | None = None,
        dataset_tags: list[str] | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.loaded = ckpt.load_model(checkpoint)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = inference_model(self.loaded.model, self.device)
        self.top_k = min(top_k, len(self.loaded.genres))
        self.moments = moments
        self.dataset_tags = dataset_tags  # what a shard's tag_idx indexes
        self.thresholds = np.asarray(self.loaded.tag_thresholds or [], dtype=np.float32)
        if self.loaded.task != "single" and len(self.thresholds) != len(self.loaded.tags):
            self.thresholds = np.full(len(self.loaded.tags), 0.5, dtype=np.float32)
        # On a CPU actor's one thread a forward pass of 8 tracks runs as fast per track
        # as one of 32, and its activations take 130 MiB less of the actor's heap
        # (bench/RESULTS.md); a GPU wants the whole batch.
        self.model_batch = model_batch or (8 if self.device.type == "cpu" else None)

    def embed(self, tokens: np.ndarray, texts: list[str | None] | None = None) -> np.ndarray:
        """The L2-normalised signatures ``[n, dim]`` float32 of ``tokens`` ``[n, ...]``
        (and, for a lyrics model, their lyrics): the ``embedding`` column of their label
        rows, without the rest of the rows."""
        if self.loaded.lyrics_vocab is not None and texts is None:
            texts = [None] * len(tokens)
        return self._forward(tokens, texts)[1]

    def _forward(
        self, tokens: np.ndarray, texts: list[str | None] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """One forward pass: genre probabilities (for task multi: the genres' sigmoid
        scores), L2-normalised embeddings, token weights, mood probabilities and
        multi-label scores (None where the model has no such head)."""
        x = torch.from_numpy(np.array(tokens, dtype=np.float32)).to(self.device)
        lyrics = None
        if texts is not None:
            assert self.loaded.lyrics_vocab is not None
            hp = self.model.hp  # the checkpoint's preset: the same bounds as in training
            lyrics = torch.from_numpy(
                self.loaded.lyrics_vocab.encode_batch(
                    texts, max_sentences=int(hp["max_sentences"]), max_words=int(hp["max_words"])
                )
            ).to(self.device)
        with torch.no_grad():
            out = self.model(x, lyrics=lyrics)
        if self.loaded.task == "multi":
            genre_p = torch.sigmoid(out.genre_logits.float()).cpu().numpy()
        else:
            genre_p = torch.softmax(out.genre_logits.float(), dim=1).cpu().numpy()
        tag_p = (
            torch.sigmoid(out.tag_logits.float()).cpu().numpy()
            if out.tag_logits is not None
            else None
        )
        embedding = torch.nn.functional.normalize(out.embedding.float(), dim=1)
        weights = out.token_weights.float().cpu().numpy() if out.token_weights is not None else None
        mood_p = (
            torch.softmax(out.mood_logits.float(), dim=1).cpu().numpy()
            if out.mood_logits is not None
            else None
        )
        return genre_p, embedding.cpu().numpy().astype(np.float32), weights, mood_p, tag_p

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        loaded = self.loaded
        tokens = np.asarray(batch["tokens"])
        texts: list[str | None] | None = None
        if loaded.lyrics_vocab is not None:
            texts = [
                t if isinstance(t, str) else None for t in batch.get("lyrics", [None] * len(tokens))
            ]
        step = self.model_batch or max(1, len(tokens))
        parts = [
            self._forward(tokens[i : i + step], None if texts is None else texts[i : i + step])
            for i in range(0, max(len(tokens), 1), step)  # an empty batch: one empty pass
        ]
        genre_p, embedding, weights, mood_p, tag_p = (
            None if column[0] is None else np.concatenate(column)
            for column in zip(*parts, strict=True)
        )
        assert genre_p is not None and embedding is not None
        genres, moods = loaded.genres, loaded.moods
        n = len(genre_p)
        top = np.argsort(-genre_p, axis=1, kind="stable")[:, : self.top_k]
        durations = batch.get("duration_s", np.full(n, loaded.spec.clip_s))
        now = datetime.now(UTC).replace(microsecond=0)
        columns: dict[str, list[Any]] = {
            "track_id": [str(t) for t in batch["track_id"]],
            "genre": [genres[row[0]] for row in top],
            "genre_prob": [float(p[row[0]]) for p, row in zip(genre_p, top, strict=True)],
            "genre_topk": [
                [{"genre": genres[j], "prob": float(p[j])} for j in row]
                for p, row in zip(genre_p, top, strict=True)
            ],
            "mood": [None] * n,
            "mood_probs": [None] * n,
            "token_weights": [None] * n,
            "signature_moments": [[] for _ in range(n)],
            "embedding": [e.tolist() for e in embedding],
            "true_genre": [
                g if isinstance(g, str) and g else None for g in batch.get("genre", [None] * n)
            ],
            "genre_tags": [None] * n,
            "true_genres": self._true_genres(batch, n),
            "split": [
                s if isinstance(s, str) and s else None for s in batch.get("split", [None] * n)
            ],
            "model_version": [loaded.version] * n,
            "labelled_at": [now] * n,
        }
        if mood_p is not None:
            columns["mood"] = [moods[int(np.argmax(p))] for p in mood_p]
            columns["mood_probs"] = [
                [{"mood": m, "prob": float(p[i])} for i, m in enumerate(moods)] for p in mood_p
            ]
        if tag_p is not None:
            columns["genre_tags"] = [
                consistent_tags(p, loaded.tags, self.thresholds, loaded.tag_parents) for p in tag_p
            ]
        if weights is not None:
            offsets = batch.get("clip_start_s", np.zeros(n))
            columns["token_weights"] = [w.tolist() for w in weights]
            columns["signature_moments"] = [
                signature_moments(w, loaded.spec, float(d), count=self.moments, offset_s=_number(o))
                for w, d, o in zip(weights, durations, offsets, strict=True)
            ]
        return pa.Table.from_pydict(columns, schema=LABELS_SCHEMA)

    def _true_genres(self, batch: dict[str, np.ndarray], n: int) -> list[list[str] | None]:
        """The catalog's genre lists: ``genres_text`` (``a|b``, from raw audio) or a
        shard's ``tag_idx`` read through the dataset's vocabulary."""
        if "genres_text" in batch:
            return [
                t.split("|") if isinstance(t, str) and t else None for t in batch["genres_text"]
            ]
        if "tag_idx" in batch and self.dataset_tags:
            titles = self.dataset_tags
            return [
                None if idx is None or len(idx) == 0 else [titles[int(i)] for i in idx]
                for idx in batch["tag_idx"]
            ]
        return [None] * n


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches of columns (``decode_for_label``'s) joined into one."""
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def decode_for_label(
    rows: pd.DataFrame,
    *,
    spec: dict[str, Any],
    errors_dir: str,
    attempt: str,
    min_duration_s: float,
    allow_silent: bool,
) -> dict[str, np.ndarray]:
    """The CPU stage for raw audio: decode and tokenize a batch of catalog rows.

    Tracks that fail become error rows written to ``errors_dir`` (one file per batch,
    named by the run ``attempt``: :func:`genreflow.formats.labels.error_file_name`);
    the rest come back as ``track_id, tokens [b, n_tokens, n_mels, frames] float16,
    duration_s, lyrics, genre``.
    """
    token_spec = TokenSpec.from_dict(spec)
    track_ids = rows["track_id"].astype(str).tolist()
    decoded = decode_tokens(
        track_ids,
        rows["uri"].astype(str).tolist(),
        token_spec,
        min_duration_s=min_duration_s,
        allow_silent=allow_silent,
        declared_s=(
            pd.to_numeric(rows["declared_duration_s"], errors="coerce").tolist()
            if "declared_duration_s" in rows
            else None
        ),
    )
    errors = decoded.errors
    kept = rows.iloc[decoded.index]

    def text(column: str) -> np.ndarray:
        values = kept[column] if column in kept else [None] * len(kept)
        return np.array([v if isinstance(v, str) else None for v in values], dtype=object)

    if errors:
        name = error_file_name(attempt, track_ids)
        storage.write_parquet_atomic(error_table(errors), storage.join(errors_dir, name))
    return {
        "track_id": np.array([track_ids[i] for i in decoded.index], dtype=object),
        "tokens": decoded.tokens,
        "duration_s": decoded.durations,
        "lyrics": text("lyrics"),
        "genre": text("genre"),
        "split": text("split"),
        "clip_start_s": np.asarray(decoded.offsets, dtype=np.float32),
        "genres_text": np.array(
            [
                "|".join(g) if isinstance(g, list | tuple | np.ndarray) and len(g) else None
                for g in (kept["genres"] if "genres" in kept else [None] * len(kept))
            ],
            dtype=object,
        ),
    }
