"""The models genreflow trains, by name: one line each. Everything that lists models (the
command-line help, ``compare``'s default, the config checks, the tests) reads this table,
so a new model is its module and its line here.

Torch-free on purpose: the help text and config checks read the names without importing
any model; :mod:`genreflow.models` imports the classes.

Out-of-tree models: ``GENREFLOW_EXTRA_MODELS="name=package.module:Class,..."`` adds
entries (a class of your own, subclassing :class:`genreflow.models.base.GenreModel`),
read where the registry is read, in every process of a job.
"""

from __future__ import annotations

import os

from genreflow.errors import ConfigError

REGISTRY: dict[str, str] = {
    "signature_attention": "genreflow.models.signature_attention:SignatureAttention",
    "multitask_attention_cnn": "genreflow.models.multitask_attention_cnn:MultitaskAttentionCNN",
    "multimodal_han": "genreflow.models.multimodal_han:MultimodalHAN",
    "baseline_cnn": "genreflow.models.baseline_cnn:BaselineCNN",
}
EXTRA_ENV = "GENREFLOW_EXTRA_MODELS"


def registered() -> dict[str, str]:
    """Every model's name and ``module:Class``: the table above, then the environment's.

    Raises:
        ConfigError: an entry of ``GENREFLOW_EXTRA_MODELS`` is not ``name=module:Class``.
    """
    models = dict(REGISTRY)
    for entry in filter(None, (e.strip() for e in os.environ.get(EXTRA_ENV, "").split(","))):
        name, _, target = entry.partition("=")
        if not name or ":" not in target:
            raise ConfigError(f"{EXTRA_ENV}: {entry!r} is not name=package.module:Class")
        models[name.strip()] = target.strip()
    return models


def model_names() -> list[str]:
    """The registered models' names, in registry order."""
    return list(registered())
