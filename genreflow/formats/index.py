"""The index folder: what ``genreflow index`` writes and ``recommend`` and the
neighbours table's readers read.

``<out>/<version>/`` holds one build: :data:`INDEX_FILE` (a serialized CPU FAISS
index over L2-normalised signatures, inner product), :data:`IDS_FILE` (position ->
track id and predicted genre), its own :data:`MANIFEST_FILE`, and
:data:`NEIGHBOURS_DIR` (:data:`NEIGHBOURS_SCHEMA` rows). ``<out>/index.json``, written
last and in one atomic write (:func:`publish`), names the current version: a reader
sees the old index or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from genreflow import storage
from genreflow.errors import GenreflowError, ShapeError

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
MANIFEST_FILE = "index.json"
NEIGHBOURS_DIR = "neighbours"
FORMAT = "genreflow.index/1"

NEIGHBOURS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string()),
        pa.field(
            "neighbours",
            pa.list_(pa.struct([("track_id", pa.string()), ("score", pa.float32())])),
        ),
    ]
)


def centre_vectors(vectors: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """What an index version stores and searches: ``vectors [n, dim]`` minus the
    catalog's mean signature ``centre``, L2-normalised again (cosine without the
    component every track shares). ``centre`` None: the vectors as they are."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if centre is None:
        return vectors
    shifted = vectors - np.asarray(centre, dtype=np.float32)
    norms = np.linalg.norm(shifted, axis=1, keepdims=True)
    return np.ascontiguousarray(shifted / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def set_search_param(index: faiss.Index, name: str, value: int) -> None:
    if name:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def new_version() -> str:
    return f"v-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def write_version(
    index: faiss.Index,
    track_ids: pa.Array | Sequence[str],
    genres: pa.Array | Sequence[str | None],
    folder: str,
    info: dict[str, Any],
) -> None:
    """Write the index file, the id map (position -> track id, genre) and the version's
    own manifest into ``folder``; readers see a version only once it is published."""
    storage.write_bytes_atomic(
        storage.join(folder, INDEX_FILE), faiss.serialize_index(index).tobytes()
    )
    ids = pa.table(
        {
            "position": pa.array(np.arange(int(index.ntotal)), pa.int64()),
            "track_id": _strings(track_ids),
            "genre": _strings(genres),
        }
    )
    storage.write_parquet_atomic(ids, storage.join(folder, IDS_FILE))
    storage.write_json_atomic(storage.join(folder, MANIFEST_FILE), info)


def _strings(values: pa.Array | Sequence[str | None]) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(values, pa.string())


def publish(out: str, version: str, info: dict[str, Any], *, keep: int) -> None:
    """Point ``<out>/index.json`` at ``version`` (one atomic write), then delete version
    folders other than the newest ``keep`` published ones (which includes folders an
    interrupted build left unpublished; run one build per folder at a time)."""
    top = storage.join(out, MANIFEST_FILE)
    history: list[str] = []
    if storage.exists(top):
        with contextlib.suppress(GenreflowError):
            history = list(storage.read_json(top).get("published", []))
    history = [v for v in history if v != version] + [version]
    storage.write_json_atomic(top, {**info, "published": history[-keep:]})
    for old in list_versions(out):
        if old not in history[-keep:]:
            log.info("removing index version %s", old)
            storage.delete_tree(storage.join(out, old))


def list_versions(out: str) -> list[str]:
    fs, path = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("v-")
    )


@dataclass
class LoadedIndex:
    """A published index, ready to search."""

    index: faiss.Index
    track_ids: pa.Array  # [count] strings: position -> track id
    genres: pa.Array  # [count] strings, null where unknown
    info: dict[str, Any]
    folder: str
    _positions: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def position(self, track_id: str) -> int:
        if self._positions is None:
            self._positions = {t: i for i, t in enumerate(self.track_ids.to_pylist())}
        try:
            return self._positions[str(track_id)]
        except KeyError:
            examples = ", ".join(self.track_ids[:3].to_pylist())
            raise GenreflowError(
                f"track id {track_id!r} is not in the index {self.folder!r} "
                f"({self.count} tracks, e.g. {examples}); was it labelled by model "
                f"{self.info.get('model_version')}?"
            ) from None

    @property
    def centre(self) -> np.ndarray | None:
        """The mean signature this version subtracts (None: built uncentred)."""
        centre = self.info.get("centre")
        return None if centre is None else np.asarray(centre, dtype=np.float32)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        stored: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each row of ``vectors`` ``[q, dim]``.

        Args:
            vectors: signatures as the label job writes them; centred here as the index
                was (:func:`centre_vectors`), unless ``stored`` (vectors read back from
                the index itself).
            exclude: ``[q]`` positions to leave out of each row's results (the query
                track itself), or -1.

        Returns:
            ``(scores [q, k] float32, positions [q, k] int64)``, best first, -1 padded.

        Raises:
            ShapeError: ``vectors`` of another dimension than the index.
            GenreflowError: an empty index.
        """
        if self.count == 0:
            raise GenreflowError(f"the index {self.folder!r} is empty: nothing to recommend")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ShapeError(
                f"query vectors of shape {vectors.shape}, the index holds dimension "
                f"{self.dim} (model {self.info.get('model_version')}): embed the query with "
                f"the index's checkpoint {self.info.get('checkpoint')!r}"
            )
        if not stored:
            vectors = centre_vectors(vectors, self.centre)
        extra = 1 if exclude is not None else 0
        scores, found = self.index.search(vectors, min(k + extra, self.count))
        if exclude is None:
            return _pad(scores, found, k)
        keep_s = np.full((len(found), k), -np.inf, dtype=np.float32)
        keep_i = np.full((len(found), k), -1, dtype=np.int64)
        for r in range(len(found)):
            mask = (found[r] != exclude[r]) & (found[r] >= 0)
            s, i = scores[r][mask][:k], found[r][mask][:k]
            keep_s[r, : len(s)], keep_i[r, : len(i)] = s, i
        return keep_s, keep_i

    def vector(self, track_id: str) -> np.ndarray:
        """The stored vector of a catalog track ``[dim]`` (exact for Flat/IVF/HNSW,
        the PQ reconstruction for IVF-PQ)."""
        pos = self.position(track_id)
        if isinstance(self.index, faiss.IndexIVF):
            self.index.make_direct_map()
        return np.asarray(self.index.reconstruct(pos), dtype=np.float32)

    def recommend(self, track_id: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` most similar catalog tracks to a catalog track, itself excluded."""
        pos = self.position(track_id)
        scores, found = self.search(
            self.vector(track_id)[None], k, exclude=np.array([pos]), stored=True
        )
        return self.rows(scores[0], found[0])

    def rows(self, scores: np.ndarray, positions: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "track_id": self.track_ids[int(p)].as_py(),
                "score": float(s),
                "genre": self.genres[int(p)].as_py(),
            }
            for s, p in zip(scores, positions, strict=True)
            if p >= 0
        ]


def _pad(scores: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if found.shape[1] >= k:
        return scores[:, :k], found[:, :k]
    pad = k - found.shape[1]
    return (
        np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
        np.pad(found, ((0, 0), (0, pad)), constant_values=-1),
    )


def open_index(out: str) -> LoadedIndex:
    """Load the published index of ``out`` (the version its ``index.json`` names).

    Raises:
        GenreflowError: no published index there, or an unreadable one.
    """
    top = storage.join(out, MANIFEST_FILE)
    if not storage.exists(top):
        raise GenreflowError(
            f"no index in {out!r} (no {MANIFEST_FILE}): build one with "
            "`genreflow index --labels DIR --out DIR`"
        )
    info = storage.read_json(top)
    if info.get("format") != FORMAT:
        raise GenreflowError(f"{top!r} is not a genreflow index manifest ({FORMAT})")
    return load_version(storage.join(out, info["version"]))


def load_version(folder: str) -> LoadedIndex:
    """Load one version folder (a published one, or one being built)."""
    info = storage.read_json(storage.join(folder, MANIFEST_FILE))
    raw = storage.read_bytes(storage.join(folder, INDEX_FILE))
    try:
        index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
    except RuntimeError as exc:
        raise GenreflowError(f"cannot read the FAISS index in {folder!r}: {exc}") from exc
    ids = storage.read_parquet(storage.join(folder, IDS_FILE))
    name = next(iter(info.get("params") or {}), "")
    if name:
        set_search_param(index, name, info["params"][name])
    return LoadedIndex(
        index=index,
        track_ids=ids.column("track_id").combine_chunks(),
        genres=ids.column("genre").combine_chunks(),
        info=info,
        folder=folder,
    )


def read_neighbours(out: str) -> pa.Table:
    """The published neighbours table (small outputs and tests)."""
    loaded_info = storage.read_json(storage.join(out, MANIFEST_FILE))
    folder = storage.join(out, loaded_info["version"], NEIGHBOURS_DIR)
    files = storage.list_files(folder, suffix=".parquet")
    tables = [storage.read_parquet(f) for f in files]
    return pa.concat_tables(tables) if tables else NEIGHBOURS_SCHEMA.empty_table()
