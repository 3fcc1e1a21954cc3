"""Ingest core: catalog rows -> Parquet token shards and error rows. No Ray here.

The output folder of an ingest run::

    <out>/_ingest.json        token spec + label vocabulary, fixed by the first run
    <out>/shards/part-*.parquet   token shards, each written atomically
    <out>/errors/part-*.parquet   error rows (track_id, uri, stage, kind, error)
    <out>/_dataset.json       written last: its presence means "finished"

A shard is named by the hash of its track ids and holds complete rows only, so a
rerun reads which tracks are done, does the rest, and never duplicates a row.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genreflow import __version__, faultpoints, storage
from genreflow.catalog import Catalog, CatalogOptions, target_counts
from genreflow.config import path_field
from genreflow.decode import Decoded, decode_tokens, error_row, error_table
from genreflow.errors import ConfigError, SpecMismatchError
from genreflow.formats.dataset import (
    DATASET_FILE,
    DATASET_FORMAT,
    DUPLICATE_KIND,
    DUPLICATE_SPLIT,
    DUPLICATES_ERRORS,
    MOOD_CLASSES,
    SHARD_META_FIELDS,
    STATE_FILE,
    mood_index,
    shard_name,
    tokens_array,
    tokens_type,
)
from genreflow.resources import RayResources
from genreflow.taxonomy import Taxonomy
from genreflow.tokens import TokenSpec, check_same_spec

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["track_id", "status", "kind", "shard", "seconds"]
TARGET_KINDS = ("single_and_multi", "single_only", "multi_only", "none")


@dataclass(frozen=True)
class IngestConfig:
    """Settings of one ingest run (``configs/ingest.yaml``)."""

    catalog: str = path_field("input")  # manifest .csv/.parquet, FMA metadata, <genre>/<file>
    out: str = path_field("output")  # output folder, local or s3://
    spec: TokenSpec = field(default_factory=TokenSpec)  # or a preset: paper000 | paper001
    catalog_options: CatalogOptions = field(default_factory=CatalogOptions)  # its form, FMA's
    # subset and audio folder, manifest path confinement, splits (shared with label)
    shard_size: int = 64  # tracks per Parquet shard and per Ray task
    min_duration_s: float = 1.0  # shorter audio is an error row; 0 pads any clip
    allow_silent: bool = False  # keep silent clips instead of error rows
    max_error_rate: float = 0.2  # above it the run exits non-zero (after writing)
    retry_errors: bool = False  # retry tracks a previous run recorded as errors
    limit: int | None = None  # ingest only the first N catalog tracks
    resources: RayResources = field(default_factory=RayResources)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.min_duration_s < 0:
            raise ConfigError(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")


def ingest_shard(
    rows: pd.DataFrame,
    *,
    out: str,
    spec: dict[str, Any],
    vocabulary: list[str],
    min_duration_s: float,
    allow_silent: bool,
    tags: list[str] | None = None,
) -> pd.DataFrame:
    """Tokenize a batch of catalog rows and write one shard and one error file.

    The unit of work of a Ray task (``map_batches`` hands it a pandas batch), and of
    the plain multiprocessing reference. Never raises for a bad track: the track
    becomes an error row.

    Returns:
        one summary row per track: ``track_id, status (ok|error), kind, shard, seconds``.
    """
    token_spec = TokenSpec.from_dict(spec)
    genre_index = {g: i for i, g in enumerate(vocabulary)}
    tag_index = {g: i for i, g in enumerate(tags or [])}
    track_ids = rows["track_id"].astype(str).tolist()
    uris = rows["uri"].astype(str).tolist()
    name = shard_name(track_ids)
    declared = (
        [_optional_float(v) for v in rows["declared_duration_s"]]
        if "declared_duration_s" in rows
        else None
    )
    decoded = decode_tokens(
        track_ids,
        uris,
        token_spec,
        min_duration_s=min_duration_s,
        allow_silent=allow_silent,
        digests=True,
        declared_s=declared,
    )
    records = rows.to_dict("records")
    ok = [
        _shard_row(records[position], track_ids[position], uris[position], decoded, k,
                   genre_index=genre_index, tag_index=tag_index)
        for k, position in enumerate(decoded.index)
    ]  # fmt: skip
    summary = [
        {
            "track_id": track_id,
            "status": "error" if i in decoded.failed else "ok",
            "kind": decoded.failed.get(i, ""),
            "shard": "" if i in decoded.failed else f"shards/{name}",
            "seconds": seconds,
        }
        for i, (track_id, seconds) in enumerate(zip(track_ids, decoded.seconds, strict=True))
    ]
    errors = decoded.errors
    if ok:
        table = pa.Table.from_pylist(ok, schema=pa.schema(SHARD_META_FIELDS))
        table = table.append_column(
            pa.field("tokens", tokens_type(token_spec)), tokens_array(decoded.tokens, token_spec)
        )
        storage.write_parquet_atomic(table, storage.join(out, "shards", name))
    if errors:
        storage.write_parquet_atomic(error_table(errors), storage.join(out, "errors", name))
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def _shard_row(
    row: dict[str, Any],
    track_id: str,
    uri: str,
    decoded: Decoded,
    k: int,
    *,
    genre_index: dict[str, int],
    tag_index: dict[str, int],
) -> dict[str, Any]:
    """The shard row of a decoded track (its tokens are appended as a column)."""
    genre = _optional_str(row.get("genre"))
    return {
        "track_id": track_id,
        "split": _optional_str(row.get("split")),
        "genre": genre,
        "genre_idx": genre_index.get(genre, -1) if genre is not None else -1,
        "artist_id": _optional_str(row.get("artist_id")),
        "valence": _optional_float(row.get("valence")),
        "lyrics": _optional_str(row.get("lyrics")),
        "uri": uri,
        "duration_s": float(decoded.durations[k]),
        "audio_sha256": decoded.file_digests[k],
        "clip_sha256": decoded.clip_digests[k],
        "tag_idx": _tag_indices(row.get("genres"), tag_index),
        "clip_start_s": float(decoded.offsets[k]),
    }


def _optional_str(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)


def _tag_indices(genres: Any, index: dict[str, int]) -> list[int] | None:
    """A track's genre titles (a list, or an array after Arrow) -> sorted vocabulary
    indices; None where it has none."""
    if genres is None or (isinstance(genres, float) and pd.isna(genres)):
        return None
    found = sorted({index[g] for g in genres if g in index})
    return found or None


def _optional_float(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return f


# --- the output folder's bookkeeping ---------------------------------------------------


@dataclass
class OutputState:
    """What an output folder already holds: its spec, vocabulary and finished tracks."""

    spec: TokenSpec
    vocabulary: list[str]
    done_ids: set[str]
    error_ids: set[str]  # tracks that failed to decode: done as well
    taxonomy: Taxonomy | None = None  # the multi-label vocabulary and its parents
    files: set[str] = field(default_factory=set)  # its shard and error files, as listed


def prepare_output(
    out: str, spec: TokenSpec, catalog: Catalog, *, retry_errors: bool
) -> OutputState:
    """Fix (first run) or check (rerun) the output's spec and vocabulary, and find the
    tracks already done. Removes ``_dataset.json``: the folder is in progress again.

    Raises:
        SpecMismatchError: the folder holds shards of another token spec.
        ConfigError: the catalog has genres the folder's vocabulary lacks.
    """
    genres = sorted(set(catalog.tracks["genre"].dropna().astype(str)))
    taxonomy = catalog.taxonomy
    state_uri = storage.join(out, STATE_FILE)
    if storage.exists(state_uri):
        state = storage.read_json(state_uri)
        existing = TokenSpec.from_dict(state["token_spec"])
        check_same_spec(existing, spec, a_name=f"existing output {out!r}", b_name="this run")
        vocabulary = list(state["vocabulary"])
        new = sorted(set(genres) - set(vocabulary))
        if new:
            raise ConfigError(
                f"catalog has genres {new} that output {out!r} (vocabulary {vocabulary}) "
                "lacks; ingest into a new output folder"
            )
        before = Taxonomy.from_dict(state["taxonomy"]) if state.get("taxonomy") else None
        if taxonomy is not None and (
            before is None or not set(taxonomy.titles) <= set(before.titles)
        ):
            raise ConfigError(
                f"catalog's multi-label genres differ from those output {out!r} was started "
                "with; ingest into a new output folder"
            )
        taxonomy = before
    else:
        if storage.list_files(storage.join(out, "shards"), suffix=".parquet"):
            raise SpecMismatchError(
                f"{out!r} holds shards but no {STATE_FILE}; it was not written by this "
                "version of genreflow ingest. Use a new output folder."
            )
        vocabulary = genres
        storage.makedirs(out)
        storage.write_json_atomic(
            state_uri,
            {
                "format": DATASET_FORMAT,
                "token_spec": spec.to_dict(),
                "vocabulary": vocabulary,
                "taxonomy": taxonomy.to_dict() if taxonomy is not None else None,
            },
        )
    storage.delete(storage.join(out, DATASET_FILE))
    shards = storage.list_files(storage.join(out, "shards"), suffix=".parquet")
    done = set(_column_values(shards, "track_id"))
    error_files = storage.list_files(storage.join(out, "errors"), suffix=".parquet")
    if retry_errors:
        for uri in error_files:
            storage.delete(uri)
        error_files = []
    # a refused catalog row is no track's outcome: a repeated id's first row is a track
    failed = [f for f in error_files if not is_catalog_problems(f)]
    return OutputState(
        spec=spec,
        vocabulary=vocabulary,
        done_ids=done,
        error_ids=set(_column_values(failed, "track_id")),
        taxonomy=taxonomy,
        files={*shards, *failed},
    )


def drop_late_files(out: str, *, listed: set[str], ours: set[str]) -> None:
    """Remove the shard and error files of ``out`` that neither were there when this run
    listed the folder (``listed``) nor have a name of this run's shards (``ours``)
    (:func:`remove_late_files`)."""
    found = storage.list_files(storage.join(out, "shards"), suffix=".parquet")
    found += storage.list_files(storage.join(out, "errors"), suffix=".parquet")
    remove_late_files(found, kept=lambda f: f in listed or posixpath.basename(f) in ours)


def remove_late_files(found: list[str], *, kept: Callable[[str], bool]) -> None:
    """Remove the files of ``found`` that ``kept`` does not vouch for, other than catalog
    problem rows (the job's own, rewritten by every run). A killed run's tasks can
    finish a file after their job died, and the run now going wrote those tracks again
    in files of its own: every track stays in one row. Ingest and labelling alike."""
    late = [f for f in found if not kept(f) and not is_catalog_problems(f)]
    for f in late:
        storage.delete(f)
    if late:
        log.warning("removed %d file(s) a killed run finished after this run began", len(late))


def _column_values(files: list[str], column: str) -> Iterable[str]:
    for table in storage.read_parquet_columns(files, [column]):
        yield from (v for v in table.column(column).to_pylist() if v)


CATALOG_PROBLEMS_PREFIX = "catalog-"  # how the name of a catalog's refused rows begins


def is_catalog_problems(uri: str) -> bool:
    """Whether error file ``uri`` holds a catalog's refused rows."""
    return posixpath.basename(uri).startswith(CATALOG_PROBLEMS_PREFIX)


def write_catalog_problems(out: str, catalog: Catalog) -> int:
    """Record the catalog's refused rows in ``out/errors/``: one file named by its rows,
    which replaces any other run's, so a rerun on the same catalog rewrites the same file
    and every row is there once. Returns how many rows this run recorded (0 when an
    earlier run recorded the same ones)."""
    folder = storage.join(out, "errors")
    earlier = [f for f in storage.list_files(folder, suffix=".parquet") if is_catalog_problems(f)]
    rows = [
        error_row(r.track_id, r.uri, "catalog", _problem_kind(r.error), r.error)
        for r in catalog.problems.itertuples(index=False)
    ]
    keys = (f"{r['track_id']}|{r['uri']}|{r['error']}" for r in rows)
    target = storage.join(folder, CATALOG_PROBLEMS_PREFIX + shard_name(keys)) if rows else ""
    for stale in earlier:
        if stale != target:
            storage.delete(stale)
    if not rows or target in earlier:
        return 0
    storage.write_parquet_atomic(error_table(rows), target)
    return len(rows)


def _problem_kind(error: str) -> str:
    if error.startswith("duplicate"):
        return "duplicate_track_id"
    if error.startswith("row without"):
        return "bad_row"
    if "uri" in error:
        return "bad_uri"
    return "bad_row"


@dataclass(frozen=True)
class Duplicate:
    track_id: str
    uri: str
    split: str | None  # the split the catalog gave it
    original: str  # the track whose audio it has
    how: str  # "file" (the same bytes) or "clip" (the same decoded audio)


def find_duplicates(out: str) -> list[Duplicate]:
    """Tracks of the dataset whose audio another track has: the same file bytes or the
    same decoded clip. Of each group the first track id (numeric ids in numeric order,
    then the others sorted as text) is the original, and an original is never itself a
    duplicate, whatever order the tracks were ingested in, so reruns and clean runs
    agree. Reads short columns of the shards (ids, splits, URIs, hex digests), never
    audio, and keeps them as Arrow columns and 64-bit keys: a few dozen bytes a track,
    not a Python object per value.
    """
    shards = storage.list_files(storage.join(out, "shards"), suffix=".parquet")
    columns = ["track_id", "split", "uri", "audio_sha256", "clip_sha256"]
    tables: list[pa.Table] = []
    for uri in shards:
        fs, path = storage.resolve(uri)
        if "clip_sha256" not in pq.read_schema(path, filesystem=fs).names:
            log.warning(
                "%s predates audio digests: duplicates are not looked for; ingest into a "
                "new folder to find them", out,
            )  # fmt: skip
            return []
        table = pq.read_table(path, columns=columns, filesystem=fs)
        tables.append(table.cast(pa.schema([(c, pa.string()) for c in columns])))
    if not tables:
        return []
    table = pa.concat_tables(tables)
    del tables
    table = table.take(_id_order(table.column("track_id")))
    original = np.arange(table.num_rows)
    how = np.zeros(table.num_rows, dtype=np.int8)  # 0 original, 1 file, 2 clip
    for code, column in ((1, "audio_sha256"), (2, "clip_sha256")):
        keys = _digest_keys(table.column(column))
        candidates = (how == 0) & (keys != 0)  # duplicates point at originals only
        rows = np.flatnonzero(candidates)
        frame = pd.DataFrame({"key": keys[rows], "row": rows})
        first = frame.groupby("key", sort=False)["row"].transform("min").to_numpy()
        repeat = first != rows
        original[rows[repeat]] = first[repeat]
        how[rows[repeat]] = code
    chained = (how == 1) & (how[original] != 0)  # the same file as a clip's duplicate
    original[chained] = original[original[chained]]
    how[chained] = 2
    found: list[Duplicate] = []
    digests = {1: table.column("audio_sha256"), 2: table.column("clip_sha256")}
    ids, splits, uris = (table.column(c) for c in ("track_id", "split", "uri"))
    for row in np.flatnonzero(how):
        column, first = digests[int(how[row])], int(original[row])
        if column[int(row)].as_py() != column[first].as_py():
            continue  # two digests that share their first 64 bits only
        found.append(
            Duplicate(
                track_id=ids[int(row)].as_py(),
                uri=uris[int(row)].as_py(),
                split=splits[int(row)].as_py(),
                original=ids[first].as_py(),
                how="file" if how[row] == 1 else "clip",
            )
        )
    return found


def _digest_keys(digests: pa.ChunkedArray) -> np.ndarray:
    """The first 64 bits of each hex digest as an integer; 0 where there is none."""
    prefix = pc.utf8_slice_codeunits(digests.fill_null(""), 0, 16)
    keys = np.zeros(len(prefix), dtype=np.uint64)
    values = prefix.to_numpy(zero_copy_only=False)
    for i, value in enumerate(values):
        if value:
            keys[i] = int(value, 16) or 1
    return keys


def _id_order(track_ids: pa.ChunkedArray) -> np.ndarray:
    """Row order: numeric ids in numeric order (FMA's 2 before 140002), then the rest as
    text."""
    text = track_ids.fill_null("")
    numeric = pc.and_(pc.utf8_is_digit(text), pc.less_equal(pc.utf8_length(text), 18))
    values = pc.if_else(numeric, text, "0").cast(pa.int64())
    order = pa.table({"text_first": pc.invert(numeric), "n": values, "id": text})
    return pc.sort_indices(
        order, sort_keys=[("text_first", "ascending"), ("n", "ascending"), ("id", "ascending")]
    ).to_numpy()


def set_aside_duplicates(out: str, duplicates: list[Duplicate]) -> None:
    """Give each duplicate the split ``duplicate`` in its shard, so no split holds the
    same audio twice (a copy in train and test would inflate test scores), and write
    one ``duplicate_audio`` error row per duplicate naming its original. Shards are
    rewritten whole and atomically; rerun, it finds them done."""
    dup_ids = {d.track_id for d in duplicates}
    for uri in storage.list_files(storage.join(out, "shards"), suffix=".parquet"):
        fs, path = storage.resolve(uri)
        head = pq.read_table(path, columns=["track_id", "split"], filesystem=fs)
        marks = [t in dup_ids and s != DUPLICATE_SPLIT for t, s in zip(
            head.column("track_id").to_pylist(), head.column("split").to_pylist(), strict=True
        )]  # fmt: skip
        if not any(marks):
            continue
        table = pq.read_table(path, filesystem=fs)
        splits = [
            DUPLICATE_SPLIT if t in dup_ids else s
            for t, s in zip(
                table.column("track_id").to_pylist(), table.column("split").to_pylist(), strict=True
            )
        ]
        at = table.schema.get_field_index("split")
        table = table.set_column(at, table.schema.field(at), pa.array(splits, pa.string()))
        storage.write_parquet_atomic(table, uri)
    target = storage.join(out, "errors", DUPLICATES_ERRORS)
    if not duplicates:
        storage.delete(target)
        return
    rows = [
        {
            "track_id": d.track_id,
            "uri": d.uri,
            "stage": "dedupe",
            "kind": DUPLICATE_KIND,
            "error": (
                f"the same audio as track {d.original} (the same "
                f"{'file bytes' if d.how == 'file' else 'decoded clip'}); left out of "
                f"the splits (the catalog put it in {d.split or 'none'})"
            ),
            "duplicate_of": d.original,
        }
        for d in duplicates
    ]
    storage.write_parquet_atomic(error_table(rows), target)


@dataclass
class ShardCounts:
    """What the manifest counts, added up one shard at a time."""

    by_split: Counter[str] = field(default_factory=Counter)
    by_split_genre: dict[str, Counter[str]] = field(default_factory=dict)
    by_split_mood: dict[str, Counter[str]] = field(default_factory=dict)
    by_split_tag: dict[str, Counter[int]] = field(default_factory=dict)
    by_target: Counter[str] = field(default_factory=Counter)
    tagged: Counter[str] = field(default_factory=Counter)  # rows with a multi-label target
    lyrics: int = 0
    shard_splits: dict[str, list[str]] = field(default_factory=dict)  # splits per shard

    def add(self, shard: str, frame: pd.DataFrame) -> None:
        splits = frame["split"].fillna("none").astype(str)
        self.shard_splits[shard] = sorted(set(splits))
        self.by_target.update(target_counts(frame["genre"].notna(), frame["tag_idx"].notna()))
        for split, tags in zip(splits, frame["tag_idx"], strict=True):
            if tags is not None:
                self.tagged[split] += 1
                self.by_split_tag.setdefault(split, Counter()).update(int(t) for t in tags)
        genres = frame["genre"].fillna("none").astype(str)
        moods = [
            MOOD_CLASSES[m] if m >= 0 else "unknown" for m in map(mood_index, frame["valence"])
        ]
        for split, genre, mood in zip(splits, genres, moods, strict=True):
            self.by_split[split] += 1
            self.by_split_genre.setdefault(split, Counter())[genre] += 1
            self.by_split_mood.setdefault(split, Counter())[mood] += 1
        self.lyrics += int(frame["lyrics"].notna().sum())

    def to_manifest(self, taxonomy: Taxonomy | None) -> dict[str, Any]:
        return {
            "rows": sum(self.by_split.values()),
            "by_split": dict(sorted(self.by_split.items())),
            "by_split_genre": {
                s: dict(sorted(c.items())) for s, c in sorted(self.by_split_genre.items())
            },
            "by_split_mood": {
                s: dict(sorted(c.items())) for s, c in sorted(self.by_split_mood.items())
            },
            "with_lyrics": self.lyrics,
            "by_target": {k: int(self.by_target.get(k, 0)) for k in TARGET_KINDS},
            "tagged_by_split": dict(sorted(self.tagged.items())),
            "by_split_tag": {
                s: {taxonomy.titles[i]: n for i, n in sorted(c.items())}
                for s, c in sorted(self.by_split_tag.items())
                if taxonomy is not None
            },
        }


def finalize(
    out: str,
    *,
    spec: TokenSpec,
    vocabulary: list[str],
    catalog_uri: str,
    extra: dict[str, Any],
    taxonomy: Taxonomy | None = None,
) -> dict[str, Any]:
    """Set duplicates aside, count what the folder holds and write ``_dataset.json``
    last (atomically)."""
    duplicates = find_duplicates(out)
    set_aside_duplicates(out, duplicates)
    shards = storage.list_files(storage.join(out, "shards"), suffix=".parquet")
    counts = ShardCounts()
    columns = ["split", "genre", "valence", "lyrics", "tag_idx"]
    for uri, table in zip(shards, storage.read_parquet_columns(shards, columns), strict=True):
        counts.add(uri.rsplit("/", 1)[-1], table.to_pandas())
    errors_by_kind: Counter[str] = Counter()
    errors = storage.list_files(storage.join(out, "errors"), suffix=".parquet")
    for table in storage.read_parquet_columns(errors, ["kind"]):
        errors_by_kind.update(table.column("kind").to_pylist())
    manifest = {
        "format": DATASET_FORMAT,
        "genreflow_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog": catalog_uri,
        "token_spec": spec.to_dict(),
        "spec_hash": spec.spec_hash(),
        "token_shape": list(spec.token_shape),
        "token_dtype": "float16",
        "labels": {
            "genre": vocabulary,
            "mood": list(MOOD_CLASSES),
            # the multi-label vocabulary (shards' tag_idx index it) and each one's parent
            "tags": list(taxonomy.titles) if taxonomy is not None else [],
            "tag_parents": dict(taxonomy.to_dict()["parents"]) if taxonomy is not None else {},  # type: ignore[call-overload]
        },
        "counts": {
            **counts.to_manifest(taxonomy),
            "errors": sum(errors_by_kind.values()),
            "errors_by_kind": dict(sorted(errors_by_kind.items())),
            "duplicates": len(duplicates),
        },
        "shards": [s.rsplit("/", 1)[-1] for s in shards],
        "shard_splits": counts.shard_splits,  # a split's rows lie in the shards naming it
        **extra,
    }
    faultpoints.reached("ingest:before-manifest")
    storage.write_json_atomic(storage.join(out, DATASET_FILE), manifest)
    return manifest


def config_dict(config: IngestConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
