"""Checkpoints: one ``model.pt`` per checkpoint folder, loaded with ``weights_only=True``.

A checkpoint holds everything inference needs besides code: weights, the model's name,
preset and hyperparameters, the label vocabularies, the token spec and (for lyrics
models) the lyrics vocabulary; plus optimizer state and the epoch for resuming.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from genreflow import storage
from genreflow.errors import ConfigError, GenreflowError
from genreflow.models import GenreModel, build_model
from genreflow.models.lyrics import LyricsVocab
from genreflow.tokens import TokenSpec, check_same_spec

CHECKPOINT_FILE = "model.pt"
FORMAT = "genreflow.checkpoint/1"


def save(folder: str, state: dict[str, Any]) -> str:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as ``folder/model.pt``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    uri = storage.join(folder, CHECKPOINT_FILE)
    storage.write_bytes_atomic(uri, buffer.getvalue())
    return uri


def best_of_run(path: str) -> str:
    """``path`` itself, or, for a run folder (it holds ``metrics.json``), the run's best
    checkpoint: ``genreflow label --checkpoint out/runs/sig1`` labels with the best one.

    Raises:
        ConfigError: the run folder's metrics name no checkpoint.
    """
    import json

    metrics = storage.join(path, "metrics.json")
    if not storage.exists(metrics):
        return path
    best = json.loads(storage.read_bytes(metrics)).get("best_checkpoint")
    if not best:
        raise ConfigError(f"run folder {path!r}: its metrics.json names no best_checkpoint")
    return str(best)


def load(path: str) -> dict[str, Any]:
    """Read a checkpoint folder (or its ``model.pt``) safely: ``weights_only=True``.

    Raises:
        ConfigError: the path holds no genreflow checkpoint.
    """
    uri = path if path.endswith(".pt") else storage.join(path, CHECKPOINT_FILE)
    if not storage.exists(uri):
        raise ConfigError(f"no checkpoint at {path!r} (expected {CHECKPOINT_FILE} there)")
    try:
        state = torch.load(
            io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True
        )
    except Exception as exc:  # unpickling refuses anything but tensors and plain data
        raise ConfigError(f"{uri!r} is not a loadable genreflow checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{uri!r} is not a genreflow checkpoint (format {FORMAT})")
    return state


def model_version(name: str, state_dict: dict[str, torch.Tensor]) -> str:
    """``<model name>-<12 hex>``: a content hash of the weights, equal for equal weights."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(
            tensor.numpy().tobytes()
            if tensor.dtype != torch.bfloat16
            else tensor.float().numpy().tobytes()
        )
    return f"{name}-{digest.hexdigest()[:12]}"


@dataclass
class LoadedModel:
    """A model ready for inference, with what it was trained on."""

    model: GenreModel
    spec: TokenSpec
    genres: list[str]
    moods: list[str]
    lyrics_vocab: LyricsVocab | None
    version: str
    path: str
    model_preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    task: str = "single"  # single | multi | both
    tags: list[str] = field(default_factory=list)  # multi-label genres (tag_logits' columns)
    tag_parents: dict[str, str | None] = field(default_factory=dict)
    tag_thresholds: list[float] = field(default_factory=list)  # chosen on validation


def load_model(
    path: str, *, expected_spec: TokenSpec | None = None, data_name: str = "the data"
) -> LoadedModel:
    """Rebuild the model of a checkpoint in eval mode.

    Raises:
        SpecMismatchError: ``expected_spec`` differs from the checkpoint's token spec.
    """
    state = load(path)
    spec = TokenSpec.from_dict(state["token_spec"])
    if expected_spec is not None:
        check_same_spec(spec, expected_spec, a_name=f"checkpoint {path!r}", b_name=data_name)
    meta = state["model"]
    words = state.get("lyrics_vocab")
    vocab = LyricsVocab(tuple(words)) if words else None
    task = str(state.get("task", "single"))
    tags = [str(t) for t in state["labels"].get("tags", [])]
    model = build_model(
        meta["name"],
        spec,
        n_genres=len(state["labels"]["genre"]),
        n_moods=len(state["labels"]["mood"]),
        preset=meta["preset"],
        overrides=meta.get("hyperparameters") or meta.get("overrides") or {},
        vocab_size=len(vocab) if vocab else None,
        task=task,
        n_tags=len(tags),
    )
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:  # a checkpoint older than its preset's current shape
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise GenreflowError(
            f"checkpoint {path!r} does not fit the {meta['name']} model its preset "
            f"{meta['preset']!r} builds today ({first[0].strip()}); it predates a change "
            "of that preset: train it again, or name the old hyperparameters in "
            "model_overrides"
        ) from exc
    model.eval()
    return LoadedModel(
        model=model,
        spec=spec,
        # the names of genre_logits' columns: the multi-label genres for task multi
        genres=tags if task == "multi" else list(state["labels"]["genre"]),
        moods=list(state["labels"]["mood"]),
        lyrics_vocab=vocab,
        version=state.get("model_version") or model_version(meta["name"], state["state_dict"]),
        path=os.fspath(path),
        model_preset=meta["preset"],
        model_overrides=dict(meta.get("overrides") or {}),
        task=task,
        tags=tags,
        tag_parents=dict(state["labels"].get("tag_parents") or {}),
        tag_thresholds=[float(t) for t in state.get("tag_thresholds", [])],
    )
