"""Pretrained weights: converted from their original form once, cached, and put into the
parts of a model that start from them. The models name those parts
(:meth:`GenreModel.pretrained_parts`); this package knows the converters, so the
architectures never import it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genreflow.errors import ConfigError

if TYPE_CHECKING:
    from genreflow.models.base import GenreModel


def load_pretrained(model: GenreModel) -> None:
    """Put each of ``model``'s pretrained parts' weights in (converted and cached by
    :func:`genreflow.pretrained.musicnn.pretrained_state`); nothing for a model learned
    from scratch.

    Raises:
        ConfigError: the weights are not installed (see the musicnn module).
    """
    from genreflow.models.musicnn import MusicnnFrontend
    from genreflow.pretrained.musicnn import pretrained_state

    for part, weights in model.pretrained_parts():
        if not isinstance(part, MusicnnFrontend):
            raise ConfigError(f"no converter for the pretrained weights {weights!r}")
        part.load_weights(pretrained_state(weights))
