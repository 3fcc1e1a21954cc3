"""musicnn's pretrained weights, converted once from its wheel to a PyTorch state dict.

Source: the ``musicnn==0.1.0`` wheel on PyPI (Jordi Pons, Music Technology Group,
Universitat Pompeu Fabra; ISC licence), which carries TensorFlow 1 checkpoints in
``musicnn/MSD_musicnn/`` (Million Song Dataset, 50 tags) and ``musicnn/MTT_musicnn/``
(MagnaTagATune, 50 tags). Install it with ``pip install --no-deps musicnn==0.1.0``:
its metadata pins TensorFlow and an old numpy, and genreflow reads only its data files
(with :mod:`genreflow.pretrained.tf_bundle`, no TensorFlow).

The converted weights are cached as ``<cache>/<model>-<digest>.pt`` (``digest``: the
checkpoint files' SHA-256) with a ``.json`` beside it naming the source and licence.
The cache is ``$GENREFLOW_CACHE`` or ``~/.cache/genreflow``. Cached files are loaded
with ``weights_only=True`` and checked against the model's parameter names and shapes;
a file that does not match is converted again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from genreflow.errors import ConfigError
from genreflow.models.musicnn import Musicnn
from genreflow.pretrained.tf_bundle import read_bundle

log = logging.getLogger(__name__)

MODELS = ("MSD_musicnn", "MTT_musicnn")
WEIGHTS_DIR_ENV = "GENREFLOW_MUSICNN_DIR"
CACHE_ENV = "GENREFLOW_CACHE"
SOURCE = "musicnn 0.1.0 (PyPI wheel), https://github.com/jordipons/musicnn"
LICENCE = (
    "ISC. Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. "
    "Code developed by Jordi Pons."
)
INSTALL_HINT = "pip install --no-deps musicnn==0.1.0"

# TensorFlow layer name -> (genreflow module path, kind); graph-construction order of
# musicnn.models.build_musicnn
_LAYERS: tuple[tuple[str, str, str], ...] = (
    ("batch_normalization", "input_norm", "bn"),
    ("conv2d", "timbral.0.conv", "conv2d"),
    ("batch_normalization_1", "timbral.0.norm", "bn"),
    ("conv2d_1", "timbral.1.conv", "conv2d"),
    ("batch_normalization_2", "timbral.1.norm", "bn"),
    ("conv2d_2", "temporal.0.conv", "conv2d"),
    ("batch_normalization_3", "temporal.0.norm", "bn"),
    ("conv2d_3", "temporal.1.conv", "conv2d"),
    ("batch_normalization_4", "temporal.1.norm", "bn"),
    ("conv2d_4", "temporal.2.conv", "conv2d"),
    ("batch_normalization_5", "temporal.2.norm", "bn"),
    ("conv2d_5", "mid.0", "conv1d"),
    ("batch_normalization_6", "mid_norm.0", "bn"),
    ("conv2d_6", "mid.1", "conv1d"),
    ("batch_normalization_7", "mid_norm.1", "bn"),
    ("conv2d_7", "mid.2", "conv1d"),
    ("batch_normalization_8", "mid_norm.2", "bn"),
    ("batch_normalization_9", "pool_norm", "bn"),
    ("dense", "dense", "dense"),
    ("batch_normalization_10", "dense_norm", "bn"),
    ("dense_1", "tags", "dense"),
)


def weights_dir(model: str = "MSD_musicnn") -> Path:
    """The installed checkpoint folder of ``model``: ``$GENREFLOW_MUSICNN_DIR/<model>``
    when that is set, else the ``musicnn`` package's own.

    Raises:
        ConfigError: unknown model, or the weights are not installed (says how).
    """
    if model not in MODELS:
        raise ConfigError(f"unknown musicnn model {model!r}; choose one of {list(MODELS)}")
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if root:
        base = Path(root)
    else:
        spec = importlib.util.find_spec("musicnn")  # locates the package; runs none of it
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"musicnn's pretrained weights are not installed: run `{INSTALL_HINT}` "
                f"(or set {WEIGHTS_DIR_ENV} to a folder holding {model}/)"
            )
        base = Path(next(iter(spec.submodule_search_locations)))
    folder = base / model
    if not (folder / ".index").is_file():
        raise ConfigError(f"no musicnn checkpoint at {folder} (expected {folder}/.index)")
    return folder


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name == ".index" or name.startswith(".data-"):
            sha.update(name.encode())
            sha.update((folder / name).read_bytes())
    return sha.hexdigest()[:16]


def convert(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A musicnn TensorFlow checkpoint folder -> :class:`Musicnn`'s state dict.

    Raises:
        BundleError: the checkpoint cannot be read.
        ConfigError: a tensor is missing or has a shape the architecture does not take.
    """
    tensors = read_bundle(os.path.join(str(folder), ""))
    state: dict[str, torch.Tensor] = {}
    for tf_name, path, kind in _LAYERS:

        def get(var: str, tf_name: str = tf_name) -> np.ndarray:
            key = f"{tf_name}/{var}"
            if key not in tensors:
                raise ConfigError(f"musicnn checkpoint {folder} has no tensor {key!r}")
            return tensors[key]

        if kind == "bn":
            state[f"{path}.weight"] = torch.from_numpy(get("gamma"))
            state[f"{path}.bias"] = torch.from_numpy(get("beta"))
            state[f"{path}.running_mean"] = torch.from_numpy(get("moving_mean"))
            state[f"{path}.running_var"] = torch.from_numpy(get("moving_variance"))
            state[f"{path}.num_batches_tracked"] = torch.tensor(0)
            continue
        kernel, bias = get("kernel"), get("bias")
        if kind == "conv2d":  # [kh, kw, in, out] -> [out, in, kh, kw]
            weight = kernel.transpose(3, 2, 0, 1)
        elif kind == "conv1d":  # [7, channels, 1, out] over (time, channel) -> [out, channels, 7]
            weight = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:  # dense [in, out] -> [out, in]
            weight = kernel.T
        state[f"{path}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{path}.bias"] = torch.from_numpy(bias)
    _check_state(state, where=str(folder))
    return state


def _check_state(state: dict[str, torch.Tensor], *, where: str) -> None:
    expected = Musicnn().state_dict()
    if set(state) != set(expected):
        raise ConfigError(f"{where}: parameters {sorted(set(expected) ^ set(state))} differ")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{where}: {name} has shape {tuple(state[name].shape)}, "
                f"musicnn needs {tuple(tensor.shape)}"
            )


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genreflow") / "musicnn"


def pretrained_state(model: str = "MSD_musicnn") -> dict[str, torch.Tensor]:
    """``model``'s converted weights, converting and caching them on first use.

    Raises:
        ConfigError: the weights are not installed, or do not fit the architecture.
    """
    folder = weights_dir(model)
    digest = _digest(folder)
    target = cache_dir() / f"{model}-{digest}.pt"
    if target.is_file():
        try:
            state = torch.load(target, map_location="cpu", weights_only=True)
            _check_state(state, where=str(target))
            return dict(state)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("cached musicnn weights %s unusable (%s); converting again", target, exc)
    state = convert(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, target)
    provenance = {
        "model": model,
        "source": SOURCE,
        "licence": LICENCE,
        "checkpoint": str(folder),
        "checkpoint_sha256_16": digest,
    }
    target.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("converted %s from %s to %s", model, folder, target)
    return state


def load_pretrained(model: str = "MSD_musicnn") -> Musicnn:
    """A :class:`Musicnn` holding ``model``'s pretrained weights, in eval mode."""
    net = Musicnn()
    net.load_state_dict(pretrained_state(model))
    return net.eval()
