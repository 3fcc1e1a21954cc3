"""Catalog readers: FMA metadata, generic manifests and genre folder trees -> one table.

Every reader returns a :class:`Catalog`: a normalised table with the columns of
:data:`CATALOG_COLUMNS` (one row per track, ``track_id`` unique, ``split`` in
train/val/test) and a table of the rows it refused (``track_id, uri, stage, error``),
which ingest writes to its errors table. Manifest contents are untrusted: URIs with
control characters or unknown schemes are refused, ``audio_root`` confines local
paths, lyrics are cleaned and capped.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from genreflow import storage
from genreflow.config import path_field
from genreflow.errors import CatalogError, ConfigError
from genreflow.taxonomy import Taxonomy, parse_genre_list, parse_id_list, read_fma_genres

log = logging.getLogger(__name__)

CATALOG_COLUMNS = [
    "track_id",
    "uri",
    "genre",  # the single-label target (FMA: genre_top), where the track has one
    "genres",  # the multi-label target: genre titles, closed under the hierarchy, or None
    "artist_id",
    "lyrics",
    "valence",
    "split",
    "declared_duration_s",  # the catalog's own duration (FMA: track.duration), NaN unknown
]
SPLITS = ("train", "val", "test")
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".flac", ".wav", ".oga", ".opus", ".aiff", ".aif", ".au")
FMA_SUBSETS = ("small", "medium", "large", "full")  # each contains the one before it
# tracks.csv's ('set', 'subset') names small, medium or large; full holds every track
# (fma_large's 30 s clips are cut from fma_full's whole tracks)
FMA_SUBSET_VALUES = ("small", "medium", "large")
FMA_SPLITS = {"training": "train", "validation": "val", "test": "test"}
TEXT = pd.StringDtype("pyarrow")  # catalog text columns: Arrow buffers, not a str per cell
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
MAX_URI_CHARS = 4096
MAX_LYRICS_CHARS = 20_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class Catalog:
    """A normalised catalog and the rows that were refused while reading it."""

    tracks: pd.DataFrame
    problems: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["track_id", "uri", "stage", "error"])
    )
    notes: dict[str, int] = field(default_factory=dict)
    taxonomy: Taxonomy | None = None  # the multi-label vocabulary, where tracks have genres

    def target_counts(self) -> dict[str, int]:
        """Tracks per kind of target: ``single_and_multi``, ``single_only``,
        ``multi_only`` and ``none`` (ingested and labelled all the same)."""
        return target_counts(self.tracks["genre"].notna(), self.tracks["genres"].notna())


def target_counts(single: Any, multi: Any) -> dict[str, int]:
    """Counts of :meth:`Catalog.target_counts` from two boolean columns."""
    s, m = np.asarray(single, dtype=bool), np.asarray(multi, dtype=bool)
    return {
        "single_and_multi": int((s & m).sum()),
        "single_only": int((s & ~m).sum()),
        "multi_only": int((~s & m).sum()),
        "none": int((~s & ~m).sum()),
    }


@dataclass(frozen=True)
class CatalogOptions:
    """How a catalog is read: the ``catalog_options:`` section that ingest and label
    configs share (``catalog_options.fma_subset=large`` on a command line)."""

    form: str = "auto"  # auto (detected from the path) or a CATALOG_FORMS name
    audio_dir: str | None = path_field("input", None)  # FMA audio root; default fma_<subset>
    fma_subset: str = "medium"  # small | medium | large | full (whole tracks, fma_full/)
    use_fma_split: bool = True  # keep FMA's training/validation/test split
    require_genre: bool = False  # drop tracks without a single-label genre
    audio_root: str | None = path_field("input", None)  # set: manifest paths must be in it
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)  # for tracks without a split
    seed: int = 0  # of the split assignment

    def __post_init__(self) -> None:
        names = ["auto", *(f.name for f in CATALOG_FORMS)]
        if self.form not in names:
            raise ConfigError(f"catalog_options.form must be one of {names}, got {self.form!r}")
        if self.fma_subset not in FMA_SUBSETS:
            raise ConfigError(
                f"catalog_options.fma_subset must be one of {list(FMA_SUBSETS)}, "
                f"got {self.fma_subset!r}"
            )


@dataclass(frozen=True)
class CatalogForm:
    """One catalog form: how to recognise it from a path and how to read it. A new form
    is one reader function and one entry in :data:`CATALOG_FORMS`."""

    name: str
    looks_like: str  # what a path of this form is, for error messages
    detects: Callable[[str], bool]  # does this path hold this form (first match wins)
    read: Callable[[str, CatalogOptions], Catalog]
    remote: bool  # readable from object storage (s3://...)


def read_catalog(path: str, options: CatalogOptions | None = None) -> Catalog:
    """Read any supported catalog form (:data:`CATALOG_FORMS`), detected from ``path``
    unless ``options.form`` names one.

    Tracks without a ``split`` get one from :func:`assign_splits`. Every track is kept,
    labelled or not, unless ``require_genre`` drops those without a single-label genre
    (counted in ``notes`` as ``dropped_without_genre``).

    Raises:
        CatalogError: the path is missing, is no known form, or is not a table of tracks.
    """
    options = options or CatalogOptions()
    catalog = catalog_form(path, options.form).read(path, options)
    if options.require_genre:
        no_genre = catalog.tracks["genre"].isna()
        if no_genre.any():
            catalog.notes["dropped_without_genre"] = int(no_genre.sum())
            catalog.tracks = catalog.tracks[~no_genre].reset_index(drop=True)
            log.warning(
                "require_genre: dropped %d tracks without a single-label genre",
                int(no_genre.sum()),
            )
    missing = catalog.tracks["split"].isna()
    if missing.any():
        assigned = assign_splits(
            catalog.tracks, fractions=options.split_fractions, seed=options.seed
        )
        catalog.tracks.loc[missing, "split"] = assigned[missing]
    if catalog.tracks.empty:
        raise CatalogError(f"catalog {path!r} holds no usable tracks")
    return catalog


def catalog_form(path: str, name: str = "auto") -> CatalogForm:
    """The form of the catalog at ``path``: the one named, or the first of
    :data:`CATALOG_FORMS` that detects it.

    Raises:
        CatalogError: the path does not exist, or no form (or not the named one) fits it.
    """
    remote = storage.is_remote(path)
    if not (storage.exists(path) if remote else Path(path).exists()):
        raise CatalogError(f"catalog {path!r} does not exist")
    candidates = [f for f in CATALOG_FORMS if name in ("auto", f.name)]
    if remote:
        candidates = [f for f in candidates if f.remote]
    for form in candidates:
        if name != "auto" or form.detects(path):
            return form
    forms = "; ".join(f"{f.name}: {f.looks_like}" for f in candidates)
    if remote:
        raise CatalogError(
            f"catalog {path!r} is no catalog form read from object storage ({forms}); "
            "the others are read from local paths"
        )
    raise CatalogError(f"catalog {path!r} is no catalog form genreflow reads ({forms})")


# --- FMA -------------------------------------------------------------------------------


def _fma_metadata_dir(p: Path) -> Path | None:
    for candidate in (p, p / "fma_metadata"):
        if (candidate / "tracks.csv").is_file():
            return candidate
    return None


def _default_fma_audio_dir(meta: Path, subset: str) -> Path:
    """``fma_<subset>`` beside the metadata folder (``fma_large/``, ``fma_full/``)."""
    return meta.parent / f"fma_{subset}"


def fma_audio_path(audio_dir: str | Path, track_id: int) -> str:
    """FMA's layout: track 2 -> ``<audio_dir>/000/000002.mp3``."""
    tid = f"{int(track_id):06d}"
    return os.path.join(str(audio_dir), tid[:3], f"{tid}.mp3")


def read_fma(
    metadata_dir: str | Path,
    *,
    audio_dir: str | Path,
    subset: str = "medium",
    use_fma_split: bool = True,
) -> Catalog:
    """Read FMA's ``tracks.csv`` (two header rows), ``genres.csv`` and ``echonest.csv``.

    Every track of the subset is a row: ``genre`` is ``('track', 'genre_top')`` where FMA
    gives one (about half of fma_large: a track whose genres span several roots has
    none), ``genres`` the titles of ``('track', 'genres_all')`` (with ``('track',
    'genres')``) closed under ``genres.csv``'s hierarchy, and the catalog's taxonomy is
    all of ``genres.csv``.

    Args:
        metadata_dir: folder with ``tracks.csv`` and optionally ``genres.csv`` and
            ``echonest.csv`` (three header rows; valence at
            ``('echonest', 'audio_features', 'valence')``).
        audio_dir: root of the ``NNN/NNNNNN.mp3`` tree.
        subset: ``small``, ``medium``, ``large`` or ``full`` (every track, whole); a subset
            includes the smaller ones.
        use_fma_split: keep FMA's training/validation/test split; otherwise leave
            ``split`` empty for :func:`assign_splits`.
    """
    if subset not in FMA_SUBSETS:
        raise CatalogError(f"FMA subset must be one of {FMA_SUBSETS}, got {subset!r}")
    meta = Path(metadata_dir)
    tracks = read_fma_tracks(meta / "tracks.csv")
    keep, numbers, problems = _fma_track_ids(tracks.index)
    if subset != "full":
        allowed = FMA_SUBSET_VALUES[: FMA_SUBSET_VALUES.index(subset) + 1]
        keep &= tracks[("set", "subset")].isin(allowed).to_numpy(dtype=bool, na_value=False)
    tracks = tracks[keep]
    out = _fma_frame(tracks, numbers[keep], audio_dir, use_fma_split=use_fma_split)
    notes: dict[str, int] = {}
    taxonomy: Taxonomy | None = None
    genres_csv = meta / "genres.csv"
    if genres_csv.is_file():
        taxonomy, titles = read_fma_genres(genres_csv)
        roots = {t for t in taxonomy.titles if taxonomy.parent(t) is None}
        unknown = set(out["genre"].dropna()) - roots
        if unknown:
            log.warning("genre_top values not top-level in genres.csv: %s", sorted(unknown))
            notes["genre_not_in_genres_csv"] = int(out["genre"].isin(unknown).sum())
        out["genres"] = _fma_genre_lists(tracks, taxonomy, titles, notes)
    else:
        log.warning(
            "%s has no genres.csv: tracks get no multi-label genres (download "
            "fma_metadata.zip whole)", meta,
        )  # fmt: skip
    echonest_csv = meta / "echonest.csv"
    if echonest_csv.is_file():
        out["valence"] = _fma_valence(echonest_csv, out["track_id"])
    out = normalise_tracks(out)
    _clean_valence(out, notes)
    problem_df = pd.DataFrame(problems, columns=["track_id", "uri", "stage", "error"])
    return Catalog(tracks=out, problems=problem_df, notes=notes, taxonomy=taxonomy)


def _fma_frame(
    tracks: pd.DataFrame, numbers: np.ndarray, audio_dir: str | Path, *, use_fma_split: bool
) -> pd.DataFrame:
    """The catalog rows of ``tracks`` (track ids ``numbers``), built column by column in
    Arrow: no Python object per cell."""
    track_id = pa.array(numbers)
    padded = pc.utf8_lpad(pc.cast(track_id, pa.string()), 6, "0")
    folder = os.path.join(str(audio_dir), "")  # FMA's layout: 2 -> <dir>/000/000002.mp3
    uri = pc.binary_join_element_wise(folder, pc.utf8_slice_codeunits(padded, 0, 3), "/", "")
    uri = pc.binary_join_element_wise(uri, padded, ".mp3", "")
    out = pd.DataFrame(
        {
            "track_id": pd.array(pc.cast(track_id, pa.string()), dtype=TEXT),
            "uri": pd.array(uri, dtype=TEXT),
            "genre": tracks[("track", "genre_top")].to_numpy(),
            "genres": None,
            "artist_id": tracks[("artist", "id")].to_numpy(),
            "lyrics": pd.array([None] * len(tracks), dtype=TEXT),
            "valence": np.nan,
            "split": (
                tracks[("set", "split")].map(FMA_SPLITS).astype(TEXT).to_numpy()
                if use_fma_split
                else None
            ),
            "declared_duration_s": (
                pd.to_numeric(tracks[("track", "duration")], errors="coerce").to_numpy(float)
                if ("track", "duration") in tracks.columns
                else np.nan
            ),
        }
    )
    return out


def _fma_valence(echonest_csv: Path, track_ids: pd.Series) -> np.ndarray | float:
    """Each track's ``('echonest', 'audio_features', 'valence')`` (NaN where echonest.csv,
    three header rows, has none; about 13k of FMA's tracks have one)."""
    echonest = pd.read_csv(echonest_csv, index_col=0, header=[0, 1, 2])
    key = ("echonest", "audio_features", "valence")
    if key not in echonest.columns:
        return np.nan
    valence = pd.to_numeric(echonest[key], errors="coerce")
    numeric = pd.to_numeric(pd.Series(echonest.index), errors="coerce").to_numpy()
    whole = np.isfinite(numeric) & (numeric == np.floor(numeric))
    valence = valence[whole]
    valence.index = pd.Index([str(int(i)) for i in numeric[whole]])
    valence = valence[~valence.index.duplicated(keep="first")]
    return track_ids.map(valence).astype(float).to_numpy()


def _fma_genre_lists(
    tracks: pd.DataFrame, taxonomy: Taxonomy, titles: dict[int, str], notes: dict[str, int]
) -> list[list[str] | None]:
    """Each track's genre titles: ``genres_all`` and ``genres`` (ids as Python literal
    lists) mapped through ``genres.csv`` and closed under the hierarchy; None for a track
    with no genre at all (counted in ``notes``: ``no_genres``, ``genres_unparsable``,
    ``genre_id_unknown``). Each distinct pair of cells is parsed once and its list shared
    by the tracks that have it (FMA has a few thousand pairs for 100k+ tracks)."""
    columns = [c for c in (("track", "genres_all"), ("track", "genres")) if c in tracks.columns]
    if not columns:
        notes["no_genres_column"] = len(tracks)
        return [None] * len(tracks)
    codes = [pd.factorize(tracks[c], use_na_sentinel=True) for c in columns]
    pair = np.zeros(len(tracks), dtype=np.int64)
    for c, uniques in codes:
        pair = pair * (len(uniques) + 1) + (c + 1)  # 0: a missing cell
    distinct, first, inverse, counts = np.unique(
        pair, return_index=True, return_inverse=True, return_counts=True
    )
    lists: list[list[str] | None] = []
    for row, count in zip(first, counts, strict=True):
        ids: list[int] = []
        for c, uniques in codes:
            cell = uniques[c[row]] if c[row] >= 0 else None
            parsed = parse_id_list(cell)
            if parsed is None and cell is not None:
                notes["genres_unparsable"] = notes.get("genres_unparsable", 0) + int(count)
            ids.extend(parsed or [])
        known = [titles[i] for i in ids if i in titles]
        if len(known) < len(set(ids)):
            notes["genre_id_unknown"] = notes.get("genre_id_unknown", 0) + int(count)
        closed = taxonomy.close(known)
        if not closed:
            notes["no_genres"] = notes.get("no_genres", 0) + int(count)
        lists.append(closed or None)
    del distinct
    return [lists[i] for i in inverse.ravel()]


FMA_FIRST_LINE = 4  # tracks.csv: two header rows and the index's name, then the tracks
FMA_NEEDED = (("set", "subset"), ("set", "split"), ("track", "genre_top"), ("artist", "id"))
FMA_OPTIONAL = (("track", "genres_all"), ("track", "genres"), ("track", "duration"))


def read_fma_tracks(path: Path) -> pd.DataFrame:
    """The columns genreflow uses of FMA's ``tracks.csv``, as text, indexed by the raw
    track id (``FMA_NEEDED`` and those of ``FMA_OPTIONAL`` it has).

    Only those columns are parsed: the file has 52 (fma_full's is ~270 MB, mostly
    free-text bios and descriptions), and a whole-table parse costs the driver several
    times the catalog's own size. The two header rows are read first to find the
    columns' positions; a third row naming the index (``track_id,,,...``) is skipped.

    Raises:
        CatalogError: not a table with FMA's two header rows and columns.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            head = list(itertools.islice(csv.reader(f), 3))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path} cannot be read as FMA's tracks.csv: {exc}") from exc
    if len(head) < 2 or len(head[0]) != len(head[1]):
        raise CatalogError(f"{path} is not FMA's tracks.csv: expected two header rows")
    names = list(zip(head[0], head[1], strict=True))
    absent = [c for c in FMA_NEEDED if c not in names]
    if absent:
        raise CatalogError(
            f"{path} lacks FMA columns {absent}; expected two header rows as in "
            "fma_metadata/tracks.csv"
        )
    wanted = [c for c in FMA_NEEDED + FMA_OPTIONAL if c in names]
    positions = [names.index(c) for c in wanted]
    index_row = len(head) == 3 and not any(head[2][1:])
    include = ["0", *(str(i) for i in positions)]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                skip_rows=3 if index_row else 2,
                column_names=[str(i) for i in range(len(names))],
                use_threads=False,
                block_size=1 << 20,
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=include,
                column_types=dict.fromkeys(include, pa.string()),
                strings_can_be_null=True,
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise CatalogError(f"{path} is not FMA's tracks.csv: {exc}") from exc
    frame = table.to_pandas(types_mapper={pa.string(): TEXT}.get)
    del table
    frame = frame.set_index("0")[[str(i) for i in positions]]  # FMA_NEEDED's order
    frame.columns = pd.MultiIndex.from_tuples(wanted)
    frame.index.name = "track_id"
    return frame


def _fma_track_ids(raw: pd.Index) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Which rows of ``tracks.csv`` to keep: those whose track id is a whole number (the
    first row of a repeated id); every row's id as an integer (0 where it is not one);
    and a problem row naming each row not kept."""
    numeric = pd.to_numeric(pd.Series(raw, dtype=TEXT), errors="coerce").to_numpy(
        dtype=float, na_value=np.nan
    )
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(numeric) & (numeric == np.floor(numeric)) & (numeric >= 0)
        whole &= numeric < 2.0**62  # an id genreflow can hold as an integer
    repeat = np.zeros(len(numeric), dtype=bool)
    repeat[whole] = pd.Series(numeric[whole]).duplicated(keep="first").to_numpy()
    keep = whole & ~repeat
    problems: list[dict[str, str]] = []
    for at in np.flatnonzero(~keep):  # the few bad rows
        where = f"tracks.csv line {FMA_FIRST_LINE + int(at)}"
        value = raw[at]
        error = (
            f"{where}: track id {int(numeric[at])} repeats"
            if whole[at]
            else f"{where}: track id {value!r} is not a whole number"
        )
        problems.append(_problem(value, "", error))
    numbers = np.zeros(len(numeric), dtype=np.int64)
    numbers[whole] = numeric[whole].astype(np.int64)
    return keep, numbers, problems


# --- generic manifest ------------------------------------------------------------------


def _read_table(path: str | Path, p: Path, *, remote: bool) -> pd.DataFrame:
    """A manifest file as a table (CSV, TSV or Parquet, local or in object storage)."""
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            # through Arrow's filesystem, not Python bytes (see storage.read_parquet)
            raw = storage.read_parquet(str(path)).to_pandas()
        elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
            source: Any = io.BytesIO(storage.read_bytes(str(path))) if remote else p
            raw = pd.read_csv(
                source,
                sep="\t" if p.suffix.lower() == ".tsv" else ",",
                dtype={"track_id": str, "artist_id": str},
                keep_default_na=True,
                encoding_errors="replace",
            )
        else:
            raise CatalogError(
                f"manifest {str(p)!r}: unknown format {p.suffix!r}; use .csv or .parquet"
            )
    except CatalogError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors have many types
        raise CatalogError(f"manifest {str(p)!r} is not a readable table: {exc}") from exc
    return raw


def _manifest_lyrics(
    raw: pd.DataFrame,
    df: pd.DataFrame,
    base: Path,
    audio_root: str | None,
    base_uri: str | None,
    notes: dict[str, int],
) -> list[str | None]:
    """The tracks' lyrics: the ``lyrics`` column, else the file ``lyrics_uri`` names;
    cleaned, every repair counted in ``notes``."""
    lyrics = list(df["lyrics"])
    if "lyrics_uri" in raw.columns:  # a lyrics file per track, where no lyrics column text
        files = raw.set_index(raw["track_id"].astype("string").str.strip())["lyrics_uri"]
        files = files[~files.index.duplicated(keep="first")]
        for i, tid in enumerate(df["track_id"]):
            if not _is_blank(lyrics[i]) or _is_blank(files.get(tid)):
                continue
            lyrics[i] = read_lyrics_file(
                files[tid], base_dir=base, audio_root=audio_root, notes=notes, base_uri=base_uri
            )
    return clean_lyrics_column(lyrics, notes)


def read_manifest(path: str | Path, *, audio_root: str | None = None) -> Catalog:
    """Read a CSV or Parquet manifest (``track_id, uri`` required; ``genre, artist_id,
    lyrics, valence, split`` optional). Relative URIs are relative to the manifest.

    Raises:
        CatalogError: not a table, or required columns missing, or bad split values.
    """
    remote = storage.is_remote(str(path))
    p = Path(urlparse(str(path)).path) if remote else Path(path)
    raw = _read_table(path, p, remote=remote)
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in ("track_id", "uri") if c not in raw.columns]
    if missing:
        raise CatalogError(
            f"manifest {str(p)!r} lacks required column(s) {missing}; it has "
            f"{list(raw.columns)[:10]}. A manifest needs track_id and uri."
        )
    df = pd.DataFrame({c: raw[c] if c in raw.columns else None for c in CATALOG_COLUMNS})
    if "duration_s" in raw.columns and "declared_duration_s" not in raw.columns:
        df["declared_duration_s"] = raw["duration_s"]
    df["track_id"] = df["track_id"].astype("string").str.strip()
    problems: list[dict[str, str]] = []
    notes: dict[str, int] = {}

    no_id = df["track_id"].isna() | (df["track_id"] == "")
    for uri in df.loc[no_id, "uri"]:
        problems.append(_problem("", uri, "row without track_id"))
    df = df[~no_id]

    base = p.resolve().parent if not remote else p.parent
    base_uri = posixpath.dirname(str(path)) if remote else None
    uris: list[str | None] = []
    for tid, uri in zip(df["track_id"], df["uri"], strict=True):
        try:
            uris.append(check_uri(uri, base_dir=base, audio_root=audio_root, base_uri=base_uri))
        except CatalogError as exc:
            problems.append(_problem(tid, uri, str(exc)))
            uris.append(None)
    df = df.assign(uri=uris)
    df = df[df["uri"].notna()]

    dup = df["track_id"].duplicated(keep="first")
    for tid, uri in zip(df.loc[dup, "track_id"], df.loc[dup, "uri"], strict=True):
        problems.append(_problem(tid, uri, "duplicate track_id: kept the first row"))
    df = df[~dup]

    df = normalise_tracks(df)
    taxonomy = None
    if df["genres"].notna().any():
        taxonomy = Taxonomy.flat(g for gs in df["genres"].dropna() for g in gs)
    bad_split = df["split"].notna() & ~df["split"].isin(SPLITS)
    if bad_split.any():
        raise CatalogError(
            f"manifest {str(p)!r}: split values {sorted(set(df.loc[bad_split, 'split']))} "
            f"are not among {list(SPLITS)}"
        )
    df["lyrics"] = _manifest_lyrics(raw, df, base, audio_root, base_uri, notes)
    _clean_valence(df, notes)
    problem_df = pd.DataFrame(problems, columns=["track_id", "uri", "stage", "error"])
    return Catalog(tracks=df, problems=problem_df, notes=notes, taxonomy=taxonomy)


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return bool(pd.isna(value)) if not isinstance(value, bytes) else not value.strip()


def read_lyrics_file(
    uri: object,
    *,
    base_dir: Path,
    audio_root: str | None,
    notes: dict[str, int],
    base_uri: str | None = None,
) -> bytes | None:
    """The raw bytes of one lyrics file (at most 4x ``MAX_LYRICS_CHARS``), or None (counted
    in ``notes``) when the path is unsafe or the file cannot be read."""
    from genreflow.errors import StorageError

    try:
        path = check_uri(uri, base_dir=base_dir, audio_root=audio_root, base_uri=base_uri)
        data = storage.read_bytes(path)
    except (CatalogError, StorageError):
        notes["lyrics_file_unreadable"] = notes.get("lyrics_file_unreadable", 0) + 1
        return None
    return data[: 4 * MAX_LYRICS_CHARS]


def clean_lyrics_column(values: list[object], notes: dict[str, int]) -> list[str | None]:
    """:func:`clean_lyrics` over a column, counting what it repaired in ``notes``:
    ``lyrics_invalid_utf8``, ``lyrics_empty`` (given but blank), ``lyrics_truncated``."""
    out: list[str | None] = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                notes["lyrics_invalid_utf8"] = notes.get("lyrics_invalid_utf8", 0) + 1
        elif isinstance(value, str) and "\ufffd" in value:  # replaced on reading the file
            notes["lyrics_invalid_utf8"] = notes.get("lyrics_invalid_utf8", 0) + 1
        text = clean_lyrics(value, max_chars=MAX_LYRICS_CHARS + 1)
        if text is None and isinstance(value, str | bytes):
            notes["lyrics_empty"] = notes.get("lyrics_empty", 0) + 1
        if text is not None and len(text) > MAX_LYRICS_CHARS:
            notes["lyrics_truncated"] = notes.get("lyrics_truncated", 0) + 1
            text = text[:MAX_LYRICS_CHARS]
        out.append(text)
    return out


def _problem(track_id: object, uri: object, error: str) -> dict[str, str]:
    return {
        "track_id": "" if pd.isna(track_id) else str(track_id),
        "uri": "" if pd.isna(uri) else str(uri)[:MAX_URI_CHARS],
        "stage": "catalog",
        "error": error,
    }


def check_uri(
    uri: object, *, base_dir: Path, audio_root: str | None = None, base_uri: str | None = None
) -> str:
    """Validate one manifest URI and make a relative local path absolute.

    ``base_uri`` (the folder of a manifest in object storage): relative paths are keys
    under it, and may not climb out of it with ``..``.

    Raises:
        CatalogError: empty, too long, control characters, an unsupported scheme, or
            a local path outside ``audio_root`` (when set).
    """
    if uri is None or (isinstance(uri, float) and np.isnan(uri)) or pd.isna(uri):
        raise CatalogError("row without uri")
    text = str(uri).strip()
    if not text:
        raise CatalogError("row without uri")
    if len(text) > MAX_URI_CHARS:
        raise CatalogError(f"uri longer than {MAX_URI_CHARS} characters")
    if _CONTROL.search(text):
        raise CatalogError("uri contains control characters")
    scheme = urlparse(text).scheme.lower()
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        if scheme in REMOTE_SCHEMES:
            return text
        if scheme != "file":
            raise CatalogError(
                f"uri scheme {scheme!r} is not supported; use a local path, file:// or "
                f"one of {', '.join(REMOTE_SCHEMES)}"
            )
        text = unquote(urlparse(text).path)
    if base_uri is not None and not text.startswith("/"):
        key = posixpath.normpath(text)
        if key.startswith(".."):
            raise CatalogError("relative uri climbs out of the manifest's folder")
        return f"{base_uri.rstrip('/')}/{key}"
    local = Path(text)
    resolved = (local if local.is_absolute() else base_dir / local).resolve()
    if audio_root is not None:
        root = Path(audio_root).resolve()
        if not resolved.is_relative_to(root):
            raise CatalogError(f"uri resolves outside audio_root {str(root)!r}")
    return str(resolved)


def clean_lyrics(value: object, *, max_chars: int = MAX_LYRICS_CHARS) -> str | None:
    """Untrusted lyrics -> text: invalid UTF-8 replaced, control characters dropped,
    capped at ``max_chars``; ``None`` for missing or blank."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        if pd.isna(value):
            return None
        value = str(value)
    text = _CONTROL.sub(" ", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        return None
    return text[:max_chars]


def _clean_valence(df: pd.DataFrame, notes: dict[str, int]) -> None:
    valence = pd.to_numeric(df["valence"], errors="coerce").astype(float)
    bad = valence.notna() & ((valence < 0.0) | (valence > 1.0))
    if bad.any():
        notes["valence_out_of_range"] = int(bad.sum())
    df["valence"] = valence.where(~bad)


def normalise_tracks(df: pd.DataFrame) -> pd.DataFrame:
    """A reader's rows as the catalog table: :data:`CATALOG_COLUMNS` in order, text as
    :data:`TEXT`, numbers as floats. ``track_id`` and ``uri`` are required; a missing
    optional column is empty (no genre, no artist, ...)."""

    def column(name: str, fill: object = None) -> pd.Series:
        return df[name] if name in df else pd.Series(fill, index=df.index, dtype=object)

    out = pd.DataFrame(
        {
            "track_id": df["track_id"].astype(TEXT),
            "uri": df["uri"].astype(TEXT),
            "genre": _strings(column("genre")),
            "artist_id": _strings(column("artist_id")),
            "lyrics": column("lyrics").astype(TEXT),
            "valence": pd.to_numeric(column("valence", np.nan), errors="coerce").astype(float),
            "split": _strings(column("split")).str.lower(),
            "declared_duration_s": pd.to_numeric(
                column("declared_duration_s", np.nan), errors="coerce"
            ),
        }
    )
    out["genres"] = pd.Series(
        [_genre_list(v) for v in column("genres")], index=df.index, dtype=object
    ).to_numpy()
    return out[CATALOG_COLUMNS].reset_index(drop=True)


def _genre_list(value: object) -> list[str] | None:
    """A ``genres`` cell: already a list of titles (FMA reader), a list or ``a|b`` text."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value or None
    return parse_genre_list(value)


def _strings(column: pd.Series) -> pd.Series:
    s = column.astype(TEXT).str.strip()
    return s.mask(s == "")


# --- folder tree -----------------------------------------------------------------------


def read_folder_tree(root: str | Path) -> Catalog:
    """Read a ``<root>/<genre>/<file>`` tree (GTZAN layout); ``track_id`` is
    ``<genre>/<file stem>``.

    Raises:
        CatalogError: no genre folder holds an audio file.
    """
    base = Path(root)
    rows = []
    for genre_dir in sorted(d for d in base.iterdir() if d.is_dir()):
        for f in sorted(genre_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                rows.append(
                    {
                        "track_id": f"{genre_dir.name}/{f.stem}",
                        "uri": str(f.resolve()),
                        "genre": genre_dir.name,
                        "genres": None,
                        "artist_id": None,
                        "lyrics": None,
                        "valence": np.nan,
                        "split": None,
                        "declared_duration_s": np.nan,
                    }
                )
    if not rows:
        raise CatalogError(
            f"{str(base)!r} is neither FMA metadata (tracks.csv) nor a <genre>/<audio file> "
            f"tree: no {'/'.join(AUDIO_EXTENSIONS)} files one folder down"
        )
    return Catalog(tracks=normalise_tracks(pd.DataFrame(rows)))


def _is_fma(path: str) -> bool:
    return Path(path).is_dir() and _fma_metadata_dir(Path(path)) is not None


def _read_fma_form(path: str, options: CatalogOptions) -> Catalog:
    meta = _fma_metadata_dir(Path(path))
    if meta is None:
        raise CatalogError(f"catalog {path!r}: no FMA tracks.csv in it or in its fma_metadata/")
    audio = options.audio_dir or _default_fma_audio_dir(meta, options.fma_subset)
    return read_fma(
        meta, audio_dir=audio, subset=options.fma_subset, use_fma_split=options.use_fma_split
    )


def _is_manifest(path: str) -> bool:
    return path.lower().endswith(MANIFEST_SUFFIXES) and (
        storage.is_remote(path) or Path(path).is_file()
    )


def _read_manifest_form(path: str, options: CatalogOptions) -> Catalog:
    return read_manifest(path, audio_root=options.audio_root)


def _read_folder_form(path: str, options: CatalogOptions) -> Catalog:
    del options  # a folder tree has no options
    return read_folder_tree(path)


def _is_folder_tree(path: str) -> bool:
    return Path(path).is_dir() and not _is_fma(path)


# Every catalog form genreflow reads; `catalog_options.form` names one, `auto` takes the
# first whose `detects` holds for the path.
CATALOG_FORMS: tuple[CatalogForm, ...] = (
    CatalogForm(
        "fma", "a folder holding FMA's tracks.csv (or fma_metadata/tracks.csv)",
        _is_fma, _read_fma_form, remote=False,
    ),
    CatalogForm(
        "manifest", "a .csv, .tsv, .txt or .parquet file of tracks",
        _is_manifest, _read_manifest_form, remote=True,
    ),
    CatalogForm(
        "folder", "a <genre>/<audio file> folder tree",
        _is_folder_tree, _read_folder_form, remote=False,
    ),
)  # fmt: skip


# --- splits ----------------------------------------------------------------------------


def assign_splits(
    tracks: pd.DataFrame, *, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> pd.Series:
    """Stratified, artist-disjoint split labels, reproducible from ``seed``.

    Tracks of one artist (or a lone track without an artist) form a group that goes
    to one split. Groups are visited largest first (ties in seeded random order) and
    each goes to the split where it least increases the chi-square distance between
    the split's genre counts and their targets, so small splits are not starved when
    artists are few.

    Returns:
        a Series of ``train``/``val``/``test`` aligned with ``tracks.index``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise CatalogError(f"split fractions must be three numbers summing to 1, got {fractions}")
    genre = tracks["genre"].astype("string").fillna("<none>")
    artist = tracks["artist_id"].astype("string")
    group_key = artist.where(artist.notna(), "track:" + tracks["track_id"].astype(str))
    members: dict[str, list[int]] = defaultdict(list)
    genre_counts: dict[str, Counter[str]] = defaultdict(Counter)
    for pos, (key, g) in enumerate(zip(group_key, genre, strict=True)):
        members[key].append(pos)
        genre_counts[key][g] += 1
    keys = sorted(members)
    rng = np.random.default_rng(seed)
    shuffled = [keys[i] for i in rng.permutation(len(keys))]
    order = sorted(shuffled, key=lambda k: -len(members[k]))  # stable: seeded ties

    totals = Counter(genre)
    assigned = [Counter[str]() for _ in SPLITS]
    labels = np.empty(len(tracks), dtype=object)
    for key in order:
        best, best_cost = 0, np.inf
        for s, frac in enumerate(fractions):
            if frac == 0:
                continue
            cost = 0.0  # growth of sum((assigned - target)^2 / target) if the group goes to s
            for g, n in genre_counts[key].items():
                target = frac * totals[g]
                have = assigned[s][g]
                cost += ((have + n - target) ** 2 - (have - target) ** 2) / target
            if cost < best_cost - 1e-12:
                best, best_cost = s, cost
        for g, n in genre_counts[key].items():
            assigned[best][g] += n
        labels[members[key]] = SPLITS[best]
    return pd.Series(labels, index=tracks.index, dtype="string")
