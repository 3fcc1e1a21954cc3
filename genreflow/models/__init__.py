"""The models, chosen by name: the four of the papers and any other in
:mod:`genreflow.model_registry`. See :mod:`genreflow.models.base`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from genreflow.errors import ConfigError
from genreflow.model_registry import registered
from genreflow.models.base import GenreModel, ModelOutput, count_parameters
from genreflow.models.baseline_cnn import BaselineCNN
from genreflow.models.multimodal_han import MultimodalHAN
from genreflow.models.multitask_attention_cnn import MultitaskAttentionCNN
from genreflow.models.signature_attention import SignatureAttention
from genreflow.tokens import TokenSpec


def _load(name: str, target: str) -> type[GenreModel]:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, GenreModel)) or cls.name != name:
        raise ConfigError(f"model {name!r} ({target}) is not a GenreModel named {name!r}")
    return cls


MODELS: dict[str, type[GenreModel]] = {
    name: _load(name, target) for name, target in registered().items()
}


def model_class(name: str) -> type[GenreModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def build_model(
    name: str,
    spec: TokenSpec,
    *,
    n_genres: int,
    n_moods: int = 3,
    preset: str = "tiny",
    overrides: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    word_vectors: np.ndarray | None = None,
    task: str = "single",
    n_tags: int = 0,
) -> GenreModel:
    """Build a model by name; ``vocab_size`` (and optional ``word_vectors``) for lyrics
    models; ``task`` multi or both with ``n_tags`` multi-label genres
    (:meth:`GenreModel.set_task`; for multi the genre head has ``n_tags`` outputs).

    Raises:
        ConfigError: unknown name, preset, hyperparameter or task.
    """
    cls = model_class(name)
    kwargs: dict[str, Any] = dict(overrides or {})
    if cls.uses_lyrics:
        kwargs["vocab_size"] = vocab_size if vocab_size is not None else 2
        kwargs["word_vectors"] = word_vectors
    factory: Callable[..., GenreModel] = cls  # every model adds `preset` to the base signature
    heads = n_tags if task == "multi" else n_genres
    model = factory(spec, n_genres=heads, n_moods=n_moods, preset=preset, **kwargs)
    model.set_task(task, n_tags=n_tags)
    return model


__all__ = [
    "MODELS",
    "BaselineCNN",
    "GenreModel",
    "ModelOutput",
    "MultimodalHAN",
    "MultitaskAttentionCNN",
    "SignatureAttention",
    "build_model",
    "count_parameters",
    "model_class",
]
