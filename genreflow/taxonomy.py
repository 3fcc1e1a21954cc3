"""A genre hierarchy: the vocabulary of multi-label targets and the parent of each genre.

FMA tags a track with any of 161 genres of a hierarchy several levels deep
(``genres.csv``: ``genre_id, #tracks, parent, title, top_level``; a root's parent is 0).
A :class:`Taxonomy` holds those titles in a fixed order (the index of a genre in every
multi-hot vector, checkpoint and label), each one's parent, and closes a track's genres
upwards: a track tagged ``Death-Metal`` also carries ``Metal``. A generic manifest's
``genres`` lists make a flat taxonomy (every genre a root).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from genreflow.errors import CatalogError

MAX_DEPTH = 32  # a deeper chain is a cycle in the parents
MAX_LIST_CHARS = 4096  # a genres cell longer than this is not a list of genre ids


@dataclass(frozen=True)
class Taxonomy:
    """Genre titles in vocabulary order and each title's parent (``None`` for a root)."""

    titles: tuple[str, ...]
    parents: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.titles)) != len(self.titles):
            raise CatalogError("genre taxonomy: titles repeat")
        known = set(self.titles)
        for child, parent in self.parents.items():
            if child not in known or (parent is not None and parent not in known):
                raise CatalogError(
                    f"genre taxonomy: {child!r} -> {parent!r} names an unknown genre"
                )
        for title in self.titles:
            self.depth(title)  # raises on a cycle

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.titles)}

    def parent(self, title: str) -> str | None:
        return self.parents.get(title)

    def depth(self, title: str) -> int:
        """1 for a root genre, 2 for its children, and so on."""
        level, node = 1, self.parents.get(title)
        while node is not None:
            level += 1
            if level > MAX_DEPTH:
                raise CatalogError(f"genre taxonomy: the parents of {title!r} form a cycle")
            node = self.parents.get(node)
        return level

    def depths(self) -> dict[str, int]:
        """Every genre's :meth:`depth`."""
        return {t: self.depth(t) for t in self.titles}

    def close(self, genres: Iterable[str]) -> list[str]:
        """``genres`` with every ancestor added, in vocabulary order; unknown titles dropped."""
        index = self.index
        chosen: set[str] = set()
        for g in genres:
            node: str | None = g
            while node is not None and node in index and node not in chosen:
                chosen.add(node)
                node = self.parents.get(node)
        return sorted(chosen, key=index.__getitem__)

    def to_dict(self) -> dict[str, object]:
        return {
            "titles": list(self.titles),
            "parents": {t: self.parents.get(t) for t in self.titles},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Taxonomy:
        titles = tuple(str(t) for t in data.get("titles", []))  # type: ignore[attr-defined]
        parents_raw = data.get("parents") or {}
        parents = {
            str(k): (None if v is None else str(v))
            for k, v in parents_raw.items()  # type: ignore[attr-defined]
        }
        return cls(titles=titles, parents=parents)

    @classmethod
    def flat(cls, titles: Iterable[str]) -> Taxonomy:
        """Every genre a root, sorted: the taxonomy of a manifest's ``genres`` lists."""
        return cls(titles=tuple(sorted(set(titles))))


def read_fma_genres(path: str | Path) -> tuple[Taxonomy, dict[int, str]]:
    """FMA's ``genres.csv`` -> the taxonomy (genres in ``genre_id`` order) and id -> title.

    Raises:
        CatalogError: missing columns, or a parent id that is not a genre.
    """
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path} is not FMA's genres.csv: {exc}") from exc
    needed = {"genre_id", "parent", "title"}
    if not needed <= set(frame.columns):
        raise CatalogError(
            f"{path} lacks FMA genres.csv columns {sorted(needed - set(frame.columns))}; "
            "expected genre_id, #tracks, parent, title, top_level"
        )
    ids = pd.to_numeric(frame["genre_id"], errors="coerce")
    parent_ids = pd.to_numeric(frame["parent"], errors="coerce").fillna(0)
    keep = ids.notna() & frame["title"].notna()
    frame, ids, parent_ids = frame[keep], ids[keep].astype(int), parent_ids[keep].astype(int)
    order = np.argsort(ids.to_numpy(), kind="stable")
    titles: dict[int, str] = {}
    seen: set[str] = set()
    for gid, title in zip(
        ids.to_numpy()[order], frame["title"].astype(str).to_numpy()[order], strict=True
    ):
        name = title.strip()
        if name in seen:  # titles name genres to users; keep them unique
            name = f"{name} ({gid})"
        seen.add(name)
        titles[int(gid)] = name
    parents: dict[str, str | None] = {}
    for gid, pid in zip(ids.to_numpy(), parent_ids.to_numpy(), strict=True):
        if pid and int(pid) not in titles:
            raise CatalogError(f"{path}: genre {gid} has parent {pid}, which is not a genre")
        parents[titles[int(gid)]] = titles[int(pid)] if pid else None
    return Taxonomy(titles=tuple(titles.values()), parents=parents), titles


def parse_id_list(cell: object) -> list[int] | None:
    """One ``genres``/``genres_all`` cell of FMA's tracks.csv (a Python literal list such
    as ``[21, 811]``) -> its ids; ``None`` when the cell is missing or not such a list."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None
    if isinstance(cell, list | tuple):
        values: object = cell
    else:
        if len(str(cell)) > MAX_LIST_CHARS:  # untrusted text: never parse a giant literal
            return None
        try:
            values = ast.literal_eval(str(cell).strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    if not isinstance(values, list | tuple):
        return None
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
            return None
        out.append(int(v))
    return out


def parse_genre_list(cell: object, *, separator: str = "|") -> list[str] | None:
    """A manifest's ``genres`` cell -> genre titles: a list (Parquet), or text separated
    by ``|``; ``None`` where the cell is missing or blank."""
    if cell is None:
        return None
    if isinstance(cell, float) and np.isnan(cell):
        return None
    if isinstance(cell, list | tuple | np.ndarray):
        items = [str(v).strip() for v in cell if v is not None]
    else:
        text = str(cell).strip()
        if not text:
            return None
        items = [part.strip() for part in text.split(separator)]
    items = [i for i in items if i]
    return items or None
