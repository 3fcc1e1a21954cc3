"""Training: the config, the metrics, one step, and :class:`TrainingRecipe`, the work of
one training worker. Plain PyTorch, no Ray: the Ray Train worker loop
(:func:`genreflow.pipelines.train.train_loop_per_worker`) drives the recipe, and runs
the same on one CPU or many GPUs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from genreflow import checkpoint as ckpt
from genreflow import storage
from genreflow.config import path_field
from genreflow.errors import ConfigError
from genreflow.features import FLOOR_DB, LOG1P_GAIN
from genreflow.models import GenreModel, build_model
from genreflow.models.base import ModelOutput
from genreflow.multilabel import best_thresholds, tagging_metrics
from genreflow.pretrained import load_pretrained
from genreflow.resources import TrainResources
from genreflow.taxonomy import Taxonomy
from genreflow.tokens import TokenSpec

TENSOR_COLUMNS = ["tokens", "genre_idx", "mood_idx"]
TAG_COLUMNS = ["tags", "has_tags"]  # task multi|both: [b, n_tags] multi-hot, [b] 1 if known
LYRICS_COLUMN = "lyrics_ids"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (``configs/train.yaml``)."""

    data: str = path_field("input")  # a finished ingest output folder
    out: str = path_field("output")  # run folder: metrics.json, epochs/, checkpoints
    model: str = "signature_attention"
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    task: Literal["single", "multi", "both"] = "single"  # single: one genre a track
    # (FMA's genre_top); multi: every genre of the hierarchy a track has (genres_all),
    # sigmoid scores with per-genre thresholds chosen on validation; both: the two heads
    tag_pos_weight_max: float = 10.0  # multi-label loss: a positive of a genre weighs
    # sqrt(negatives / positives) in the training split, capped here (rare genres)
    epochs: int = 10
    batch_size: int = 16
    optimizer: Literal["adam", "sgd"] = "adam"  # adam: paper 001; sgd (Nesterov): paper 002
    lr: float = 1e-3
    weight_decay: float = 1e-3  # L2, paper 001
    momentum: float = 0.9  # SGD only
    class_weighting: Literal["none", "balanced"] = "balanced"
    mood_loss_weight: float = 1.0
    early_stopping_patience: int = 0  # epochs without a better val macro-F1; 0: off
    # --- the recipe (bench/RESULTS.md "Training recipe" measures each) ---
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 at `epochs`
    warmup_epochs: int = 0  # linear warm-up from lr / (warmup + 1)
    label_smoothing: float = 0.0  # genre and mood cross-entropy
    mixup_alpha: float = 0.0  # mixup of tokens and labels, lambda ~ Beta(a, a); 0: off
    spec_augment: int = 0  # time and frequency masks per token (each <= 1/8 of its axis)
    gain_jitter_db: float = 0.0  # random gain per track, uniform in +-this many dB
    offset_jitter: float = 0.0  # circular shift of every token's frames, up to this fraction
    frontend_lr_scale: float = 0.1  # a fine-tuned pretrained front end (model_overrides=
    # {finetune: true}) learns at lr x this; the layers above it at lr
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer
    seed: int = 0
    deterministic: bool = False  # torch's deterministic algorithms: a rerun, or a run
    # resumed after a crash, ends with the same weights to the bit on one worker (slower
    # on GPUs; an operation without a deterministic kernel then fails instead)
    mixed_precision: bool | Literal["auto", "bf16", "fp16"] = "auto"  # auto (true): bf16 on
    # GPUs that support it, fp16 with a grad scaler on older ones, none on CPUs; false: fp32
    channels_last: bool = True  # conv layout; 1.2-1.8x faster on CPU (bench/RESULTS.md)
    storage_path: str | None = path_field("output", None)  # checkpoints; default <out>/checkpoints
    resume: bool = False  # continue the run in `out` from its latest checkpoint
    folds: int = 0  # k-fold cross-validation over the training split; 0: off
    lyrics_min_count: int = 2
    lyrics_max_vocab: int = 20_000
    lyrics_vectors: str | None = path_field("input", None)  # a word2vec text file (local or
    # s3://) the lyrics model's word embeddings start from (paper 002); read by the driver
    resources: TrainResources = field(default_factory=TrainResources)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "frontend_lr_scale", "tag_pos_weight_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"folds must be 0 (off) or >= 2, got {self.folds}")
        ranges = {
            "label_smoothing": (0.0, 1.0),
            "mixup_alpha": (0.0, math.inf),
            "gain_jitter_db": (0.0, math.inf),
            "offset_jitter": (0.0, 1.0),
        }
        for name, (low, high) in ranges.items():
            if not low <= getattr(self, name) < high:
                raise ConfigError(f"{name} must be in [{low}, {high}), got {getattr(self, name)}")
        for name in ("warmup_epochs", "spec_augment"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


# --- which rows train, validate and test ---------------------------------------------------


def fold_of(key: str, folds: int) -> int:
    """A stable fold for an artist (or a track without one), the same on every machine."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % folds


def _fold_key(artist_id: Any, track_id: Any) -> str:
    missing = artist_id is None or (isinstance(artist_id, float) and math.isnan(artist_id))
    return str(track_id) if missing else str(artist_id)


@dataclass(frozen=True)
class Part:
    """The shard rows one dataset of a run holds: the rows of ``split``; under
    cross-validation only those whose artist is (``held_out``) or is not in fold ``fold``
    of ``folds``, so an artist never trains and validates in one fold. This is training's
    one splitting rule: however the datasets are built (on the driver, streamed or
    materialized by Ray Data), rows are chosen by :meth:`mask`."""

    split: str
    fold: int | None = None
    folds: int = 0
    held_out: bool = False

    @property
    def columns(self) -> list[str]:
        """The shard columns :meth:`mask` reads."""
        return ["split", *(["track_id", "artist_id"] if self.fold is not None else [])]

    def mask(
        self,
        split: Sequence[Any],
        track_id: Sequence[Any] = (),
        artist_id: Sequence[Any] = (),
    ) -> np.ndarray:
        """Which of the rows with these column values belong to this part."""
        keep = np.asarray(split, dtype=object) == self.split
        if self.fold is None:
            return keep
        in_fold = np.fromiter(
            (
                fold_of(_fold_key(a, t), self.folds) == self.fold
                for a, t in zip(artist_id, track_id, strict=True)
            ),
            dtype=bool,
            count=len(keep),
        )
        return keep & (in_fold == self.held_out)


RUN_PARTS = {"train": Part("train"), "val": Part("val"), "test": Part("test")}


def fold_parts(fold: int, folds: int) -> dict[str, Part]:
    """Cross-validation fold ``fold``: it validates on its artists and trains on the rest
    of the training split."""
    return {
        "train": Part("train", fold=fold, folds=folds, held_out=False),
        "val": Part("train", fold=fold, folds=folds, held_out=True),
    }


# --- metrics ---------------------------------------------------------------------------

# What does not make two runs different: where they write, how they resume, what they
# run on and how fast. Every other TrainConfig field is part of the protocol, so a field
# added later counts unless it is named here (tests/test_train_protocol.py checks both).
NOT_PROTOCOL_KEYS = frozenset(
    {
        "out",
        "storage_path",
        "resume",
        "resources",
        "mixed_precision",
        "channels_last",
        "deterministic",
    }
)


def protocol_keys() -> tuple[str, ...]:
    """The keys that make two runs comparable: a rerun (of the demo, of a comparison)
    keeps a finished run only when they are the same as the finished run's."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_PROTOCOL_KEYS)


PROTOCOL_KEYS = protocol_keys()


def finished_run(run: str, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a run that finished earlier in ``run``, or None when none did.

    Raises:
        ConfigError: that run was trained under another protocol (``PROTOCOL_KEYS``).
    """
    import json

    found = storage.join(run, "metrics.json")
    if not storage.exists(found):
        return None
    metrics: dict[str, Any] = json.loads(storage.read_bytes(found))
    before, now = metrics.get("config", {}), dataclasses.asdict(config)
    changed = [k for k in PROTOCOL_KEYS if k in before and before[k] != now[k]]
    if changed:
        diff = ", ".join(f"{k}: {before[k]!r} then, {now[k]!r} now" for k in changed)
        raise ConfigError(
            f"{run!r} holds a model trained with other settings ({diff}); write into a new "
            "--out, or rerun with the same settings to finish what is there"
        )
    return metrics


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1, log-loss and the confusion matrix.

    Args:
        probs: ``[n, n_classes]`` predicted probabilities.
        labels: ``[n]`` true class ids; ``-1`` (unknown) rows are ignored.
    """
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    n_classes = len(class_names)
    if labels.size == 0:
        return {"count": 0}
    predicted = probs.argmax(axis=1)
    matrix = np.bincount(labels * n_classes + predicted, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )  # rows: true class, columns: predicted
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (true count + predicted count); 0 when both are 0
    support = matrix.sum(axis=1) + matrix.sum(axis=0)
    per_class = np.divide(
        2.0 * np.diag(matrix), support, out=np.zeros(n_classes), where=support > 0
    )
    present = np.unique(labels)
    clipped = np.clip(probs[np.arange(labels.size), labels], 1e-12, 1.0)
    return {
        "count": int(labels.size),
        "accuracy": float((predicted == labels).mean()),
        # macro over the classes present in the labels: absent ones carry no evidence
        "macro_f1": float(per_class[present].mean()),
        "per_class_f1": {name: float(per_class[i]) for i, name in enumerate(class_names)},
        "log_loss": float(-np.log(clipped).mean()),
        "confusion_matrix": matrix.tolist(),
    }


def balanced_class_weights(counts: dict[str, int], genres: list[str]) -> list[float]:
    """``n / (k * n_c)`` per genre (1.0 for genres absent from training)."""
    total = sum(counts.get(g, 0) for g in genres)
    present = sum(1 for g in genres if counts.get(g, 0))
    return [total / (present * counts[g]) if counts.get(g, 0) else 1.0 for g in genres]


# --- one step ----------------------------------------------------------------------------


def batch_loss(
    out: ModelOutput,
    genre: Tensor,
    mood: Tensor,
    *,
    class_weights: Tensor | None,
    mood_loss_weight: float,
    label_smoothing: float = 0.0,
    tags: Tensor | None = None,
    has_tags: Tensor | None = None,
    tag_pos_weight: Tensor | None = None,
    task: str = "single",
) -> Tensor:
    """The genre loss of ``task`` plus, where the model has a mood head, the mood
    cross-entropy over tracks with a known mood only. A track without a target of a
    kind contributes nothing to that kind's loss (every track is in the dataset):

    - single (and both): cross-entropy over tracks with a genre (``genre`` >= 0);
    - multi (and both): binary cross-entropy of ``tag_logits`` against the multi-hot
      ``tags`` ``[b, n_tags]`` over tracks with ``has_tags``, a positive of genre j
      weighted ``tag_pos_weight[j]`` (:func:`genreflow.multilabel.pos_weights`).
    """
    loss = out.genre_logits.new_zeros((), dtype=torch.float32)
    if task != "multi":
        if bool((genre >= 0).any()):
            loss = nn.functional.cross_entropy(
                out.genre_logits.float(),
                genre,
                weight=class_weights,
                label_smoothing=label_smoothing,
                ignore_index=-1,  # a track without a genre adds nothing
            )
        else:  # keeps every parameter in the graph (DDP), adds nothing
            loss = 0.0 * out.genre_logits.float().sum()
    if task != "single":
        assert out.tag_logits is not None and tags is not None and has_tags is not None
        per = nn.functional.binary_cross_entropy_with_logits(
            out.tag_logits.float(), tags.float(), pos_weight=tag_pos_weight, reduction="none"
        ).mean(dim=1)  # [b]
        mask = has_tags.float()
        loss = loss + (per * mask).sum() / mask.sum().clamp(min=1)
    if out.mood_logits is not None:
        known = mood >= 0
        per_track = nn.functional.cross_entropy(
            out.mood_logits.float(),
            mood.clamp(min=0),
            reduction="none",
            label_smoothing=label_smoothing,
        )
        mood_loss = (per_track * known).sum() / known.sum().clamp(min=1)
        loss = loss + mood_loss_weight * mood_loss
    return loss


# --- augmentation and the learning-rate schedule ---------------------------------------


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The multiple of ``config.lr`` that ``epoch`` trains with: a linear warm-up over
    ``warmup_epochs``, then constant or a cosine decay ending at 0 after ``epochs``."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if config.lr_schedule == "constant":
        return 1.0
    progress = (epoch - warmup) / max(1, config.epochs - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def augment_tokens(tokens: Tensor, config: TrainConfig, spec: TokenSpec) -> Tensor:
    """The recipe's input augmentation of a training batch ``[b, t, mels, frames]``
    (float32, the spec's scale): random gain per track, a circular shift of the frames,
    then SpecAugment-style masks set to each token's minimum. Draws from torch's global
    generator, which the run seeds and its checkpoints carry."""
    b, t, m, f = tokens.shape
    device = tokens.device
    x = tokens
    if config.gain_jitter_db > 0:
        gain_db = (torch.rand(b, 1, 1, 1, device=device) * 2 - 1) * config.gain_jitter_db
        if spec.scale == "db":
            x = torch.clamp(x + gain_db, min=FLOOR_DB)
        else:  # log10(1 + g * mel): back to mel power, scale, compress again
            mel = (torch.pow(10.0, x) - 1.0).clamp(min=0) / LOG1P_GAIN
            x = torch.log10(1.0 + LOG1P_GAIN * mel * torch.pow(10.0, gain_db / 10.0))
    if config.offset_jitter > 0:
        most = max(1, int(config.offset_jitter * f))
        shift = int(torch.randint(-most, most + 1, (1,)))
        x = torch.roll(x, shifts=shift, dims=3)
    if config.spec_augment > 0:
        floor = x.amin(dim=(2, 3), keepdim=True)  # [b, t, 1, 1]
        keep = torch.ones(b, t, m, f, dtype=torch.bool, device=device)
        for axis, size in ((2, m), (3, f)):
            for _ in range(config.spec_augment):
                width = torch.randint(0, max(1, size // 8) + 1, (b, t, 1, 1), device=device)
                start = (torch.rand(b, t, 1, 1, device=device) * (size - width + 1)).long()
                pos = torch.arange(size, device=device)
                pos = pos.view(1, 1, size, 1) if axis == 2 else pos.view(1, 1, 1, size)
                keep &= ~((pos >= start) & (pos < start + width))
        x = torch.where(keep, x, floor)
    return x


def mixup(batch: dict[str, Tensor], alpha: float) -> tuple[dict[str, Tensor], Tensor, float]:
    """Mix every track's tokens with another's: ``lam * x_i + (1 - lam) * x_j``.
    Returns the mixed batch, the partner order ``j`` and ``lam``."""
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,)))).beta(alpha, alpha))
    order = torch.randperm(batch["tokens"].shape[0], device=batch["tokens"].device)
    mixed = dict(batch)
    mixed["tokens"] = lam * batch["tokens"] + (1.0 - lam) * batch["tokens"][order]
    return mixed, order, lam


def forward(model: nn.Module, batch: dict[str, Tensor]) -> ModelOutput:
    output: ModelOutput = model(batch["tokens"], lyrics=batch.get(LYRICS_COLUMN))
    return output


def predict(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, np.ndarray]:
    """Genre and mood probabilities over ``batches``, with their labels (eval mode)."""
    model.eval()
    columns: dict[str, list[np.ndarray]] = {}

    def keep(name: str, value: Tensor) -> None:
        columns.setdefault(name, []).append(
            value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
        )

    with torch.no_grad():
        for batch in batches:
            out = forward(model, batch)
            keep("genre_probs", torch.softmax(out.genre_logits.float(), dim=1))
            if out.mood_logits is not None:
                keep("mood_probs", torch.softmax(out.mood_logits.float(), dim=1))
            if out.tag_logits is not None and "tags" in batch:
                keep("tag_probs", torch.sigmoid(out.tag_logits.float()))
                keep("tags", batch["tags"])
                keep("has_tags", batch["has_tags"])
            keep("genre", batch["genre_idx"])
            keep("mood", batch["mood_idx"])
    model.train()
    result = {name: np.concatenate(parts) for name, parts in columns.items()}
    result.setdefault("genre_probs", np.zeros((0, 0), np.float32))
    result.setdefault("genre", np.zeros(0, np.int64))
    result.setdefault("mood", np.zeros(0, np.int64))
    return result


@dataclass(frozen=True)
class Tags:
    """A run's multi-label genres: titles in vocabulary order and each one's parent."""

    titles: list[str]
    parents: dict[str, str | None]

    @property
    def depths(self) -> dict[str, int]:
        return Taxonomy(tuple(self.titles), self.parents).depths()


def evaluate(
    predictions: dict[str, np.ndarray],
    genres: list[str],
    moods: list[str],
    *,
    task: str = "single",
    tags: Tags | None = None,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of :func:`predict`'s output: single-label (task single|both) at the top
    level, multi-label under ``tags`` (task multi|both) at ``thresholds`` (None: chosen
    on these predictions, as on validation; returned under ``tags.thresholds``)."""
    metrics: dict[str, Any] = {}
    if task != "multi":
        metrics = classification_metrics(predictions["genre_probs"], predictions["genre"], genres)
    if "mood_probs" in predictions:
        metrics["mood"] = classification_metrics(
            predictions["mood_probs"], predictions["mood"], moods
        )
    if task != "single" and tags is not None and "tag_probs" in predictions:
        known = predictions["has_tags"].astype(bool)
        probs, targets = predictions["tag_probs"][known], predictions["tags"][known]
        if thresholds is None:
            thresholds = best_thresholds(probs, targets)
        metrics["tags"] = tagging_metrics(
            probs, targets, tags.titles, thresholds=thresholds, depths=tags.depths
        )
        metrics["tags"]["thresholds"] = [float(t) for t in thresholds]
    return metrics


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer over the trainable parameters (a frozen front end has none).

    A fine-tuned pretrained front end (parameters under a ``frontend`` module) is a group
    of its own whose ``lr_scale`` is ``config.frontend_lr_scale``: each epoch's learning
    rate (:meth:`TrainingRecipe.train_epoch`) is multiplied by its group's ``lr_scale``."""
    own: list[nn.Parameter] = []
    pretrained: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (pretrained if "frontend" in name.split(".") else own).append(param)
    groups: list[dict[str, Any]] = [{"params": own, "lr_scale": 1.0}]
    if pretrained:
        groups.append({"params": pretrained, "lr_scale": config.frontend_lr_scale})
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )


# --- the worker loop ---------------------------------------------------------------------


def tensor_batch(batch: dict[str, np.ndarray], *, float_tokens: bool) -> dict[str, Tensor]:
    """Rows from the data iterator -> the step's tensors: int64 labels, and float32 tokens
    (``float_tokens``, for a CPU worker) or the float16 tokens as stored (a GPU gets half
    the bytes over the bus and converts on the device).

    The conversion is numpy's on purpose. The iterator calls this in its own threads, and
    a torch conversion there starts an OpenMP thread team beside the step's. With more
    OpenMP threads in a process than cores, libgomp stops spinning at its barriers: the
    step's threads then sleep and wake at every parallel region (about 300 context
    switches a step instead of 7, measured in a Ray Train worker; bench/RESULTS.md).
    """
    out: dict[str, Tensor] = {}
    for name, values in batch.items():
        array = np.asarray(values)
        if name == "tokens":
            array = array.astype(np.float32 if float_tokens else array.dtype, copy=False)
        else:
            array = array.astype(np.int64, copy=False)
        out[name] = torch.from_numpy(np.ascontiguousarray(array))
    return out


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out["tokens"] = out["tokens"].float()
    out["genre_idx"] = out["genre_idx"].long()
    out["mood_idx"] = out["mood_idx"].long()
    if "tags" in out:
        out["tags"] = out["tags"].float()
    return out


def _gather(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All workers' validation predictions, concatenated, on every worker."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return predictions
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, predictions)
    gathered = {}
    for key in set().union(*(p.keys() for p in parts)):
        arrays = [p[key] for p in parts if key in p and len(p[key])]  # a worker may have none
        gathered[key] = np.concatenate(arrays) if arrays else predictions.get(key, np.zeros(0))
    return gathered


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def _replicas_in_sync(net: nn.Module) -> bool:
    """Whether every worker holds the same parameters (DDP's promise), by digest."""
    digest = ckpt.model_version("params", dict(net.named_parameters()))
    digests: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, digest)
    return len(set(digests)) == 1


@dataclass(frozen=True)
class Precision:
    """How a training step computes: autocast to ``dtype`` (None: float32 throughout),
    with a gradient scaler when float16's narrow range needs one."""

    name: Literal["bf16", "fp16", "fp32"]
    dtype: torch.dtype | None
    scaled: bool


def choose_precision(
    setting: bool | str, device: torch.device, *, bf16_supported: bool | None = None
) -> Precision:
    """The step's precision for ``mixed_precision`` on ``device``.

    ``auto`` (or true): bf16 on a GPU that supports it (Ampere and later: the range of
    float32, no scaler), fp16 with a grad scaler on an older GPU, float32 on a CPU
    (autocast there is slower than float32 on most CPUs). ``bf16``/``fp16`` as asked, on
    any device; false: float32. ``bf16_supported`` None asks the device.
    """
    if setting is False or setting == "off":
        return Precision("fp32", None, False)
    if setting in (True, "auto"):
        if device.type != "cuda":
            return Precision("fp32", None, False)
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        setting = "bf16" if bf16_supported else "fp16"
    if setting == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if setting == "fp16":
        return Precision("fp16", torch.float16, True)
    raise ConfigError(f"mixed_precision must be auto, bf16, fp16 or false, got {setting!r}")


class TrainingRecipe:
    """One worker's training, in plain PyTorch: :meth:`restore` a checkpoint's state,
    :meth:`prepare` (device, DDP), then per epoch :meth:`train_epoch`, :meth:`evaluate`
    and :meth:`end_epoch`, and :meth:`state` for the checkpoint. Ray Train's worker loop
    and the DDP tests drive the same object; nothing here knows about Ray."""

    def __init__(
        self,
        config: TrainConfig,
        spec: TokenSpec,
        *,
        genres: list[str],
        moods: list[str],
        words: list[str] | None = None,
        class_weights: list[float] | None = None,
        device: torch.device | None = None,
        word_vectors: np.ndarray | None = None,
        tags: Tags | None = None,
        tag_pos_weight: list[float] | None = None,
    ) -> None:
        self.config, self.spec, self.genres, self.moods = config, spec, genres, moods
        self.tags = tags
        if config.task != "single" and (tags is None or len(tags.titles) < 2):
            raise ConfigError(
                f"task={config.task} needs multi-label genres in the dataset (ingest a catalog "
                "with FMA's genres_all or a manifest's genres column)"
            )
        self.words = list(words) if words else None
        self.device = device or torch.device("cpu")
        torch.manual_seed(config.seed)
        torch.use_deterministic_algorithms(config.deterministic)
        self.model: GenreModel = build_model(
            config.model,
            spec,
            n_genres=len(genres),
            n_moods=len(moods),
            preset=config.preset,
            overrides=config.model_overrides,
            vocab_size=len(self.words) if self.words else None,
            word_vectors=word_vectors,  # a lyrics model's starting word embeddings
            task=config.task,
            n_tags=len(tags.titles) if tags is not None else 0,
        )
        load_pretrained(self.model)  # a pretrained front end's weights; restore() may replace
        self.net: nn.Module = self.model
        self.optimizer = make_optimizer(self.model, config)
        self.precision = choose_precision(config.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.class_weights = (
            torch.tensor(class_weights, dtype=torch.float32, device=self.device)
            if class_weights
            else None
        )
        self.tag_pos_weight = (
            torch.tensor(tag_pos_weight, dtype=torch.float32, device=self.device)
            if tag_pos_weight and config.task != "single"
            else None
        )
        self.tag_thresholds: list[float] = []  # chosen on the last validation
        self.start_epoch, self.best_f1, self.stale = 0, -1.0, 0
        self.history: list[dict[str, Any]] = []
        self._optimizer_state: dict[str, Any] | None = None

    def ddp_options(self) -> dict[str, Any]:
        """``DistributedDataParallel`` arguments. A lyrics model's text branch gets no
        gradient from a batch without lyrics (every FMA batch has such tracks); DDP must
        then look for unused parameters or it stops at the next step."""
        return {"find_unused_parameters": bool(self.model.uses_lyrics)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (:meth:`state`): weights now, the optimizer's
        state once :meth:`prepare` has put the weights on their device."""
        self.model.load_state_dict(state["state_dict"])
        self._optimizer_state = state["optimizer"]
        self.start_epoch = int(state["epoch"]) + 1
        if "torch_rng" in state:  # dropout and friends continue where the run stopped
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.best_f1, self.stale = float(state["best_f1"]), int(state["stale"])
        self.history = list(state["history"])

    def prepare(self, wrap: Any = None) -> None:
        """Memory layout, device and (``wrap``, e.g. DDP) parallel wrapper. Optimizer
        state restored before is loaded here, after the weights moved: loading casts it
        to their device, so a GPU run resumes with its Adam moments on the GPU."""
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.net = wrap(self.model) if wrap is not None else self.model.to(self.device)
        if self._optimizer_state is not None:
            self.optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None

    @property
    def inner(self) -> nn.Module:
        """The model without its parallel wrapper (what a checkpoint holds)."""
        return self.net.module if isinstance(self.net, DistributedDataParallel) else self.net

    def step(self, batch: dict[str, Tensor]) -> float:
        """One optimisation step on ``batch`` (on the device), with the recipe's
        augmentation; its loss."""
        precision, config = self.precision, self.config
        if config.gain_jitter_db or config.offset_jitter or config.spec_augment:
            batch = {**batch, "tokens": augment_tokens(batch["tokens"].float(), config, self.spec)}
        order, lam = None, 1.0
        if config.mixup_alpha > 0:
            batch, order, lam = mixup(
                {**batch, "tokens": batch["tokens"].float()}, config.mixup_alpha
            )
        with torch.autocast(
            self.device.type, dtype=precision.dtype, enabled=precision.dtype is not None
        ):
            out = forward(self.net, batch)

        def loss_for(rows: Tensor | None) -> Tensor:
            def pick(name: str) -> Tensor | None:
                value = batch.get(name)
                return value if value is None or rows is None else value[rows]

            genre, mood = pick("genre_idx"), pick("mood_idx")
            assert genre is not None and mood is not None
            return batch_loss(
                out,
                genre,
                mood,
                class_weights=self.class_weights,
                mood_loss_weight=config.mood_loss_weight,
                label_smoothing=config.label_smoothing,
                tags=pick("tags"),
                has_tags=pick("has_tags"),
                tag_pos_weight=self.tag_pos_weight,
                task=config.task,
            )

        loss = loss_for(None)
        if order is not None:
            loss = lam * loss + (1.0 - lam) * loss_for(order)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())  # also waits for the device to finish

    def train_epoch(
        self, batches: Iterable[dict[str, Tensor]], *, epoch: int | None = None
    ) -> dict[str, Any]:
        """Train on every batch (at ``epoch``'s learning rate, :func:`lr_factor`); the
        epoch's loss and where its time went."""
        lr = self.config.lr * lr_factor(self.config, epoch if epoch is not None else 0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.net.train()
        started, waited, first_wait, computed = time.perf_counter(), 0.0, 0.0, 0.0
        cpu_started = time.process_time()  # every thread of this worker, Ray's included
        losses: list[float] = []
        wait_start = time.perf_counter()
        for batch in batches:
            step_start = time.perf_counter()
            waited += step_start - wait_start
            if not losses:  # the first batch waits for the shuffle buffer to fill
                first_wait = waited
            losses.append(self.step(batch))
            wait_start = time.perf_counter()
            computed += wait_start - step_start
        return {
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "train_seconds": time.perf_counter() - started,
            "data_wait_seconds": waited,
            "compute_seconds": computed,
            "cpu_seconds": time.process_time() - cpu_started,
            "first_batch_wait_seconds": first_wait,
            "steps": len(losses),
            "lr": lr,
        }

    def evaluate(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, Any]:
        """Metrics over every worker's ``batches`` (gathered when distributed); for a
        multi-label task the per-genre thresholds are chosen on them (kept for the
        checkpoint)."""
        metrics = evaluate(
            _gather(predict(self.net, batches)),
            self.genres,
            self.moods,
            task=self.config.task,
            tags=self.tags,
        )
        if "tags" in metrics:
            self.tag_thresholds = list(metrics["tags"]["thresholds"])
        return metrics

    def end_epoch(
        self, epoch: int, trained: dict[str, Any], val: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """The epoch's metrics, and whether early stopping ends the run. The score that
        picks the best checkpoint (``val_score``) is the single-label macro-F1, or for
        task multi the multi-label macro PR-AUC (mAP), which needs no threshold."""
        tag_val = val.get("tags", {})
        if self.config.task == "multi":
            f1 = float(tag_val.get("macro_f1", 0.0))
            score = _finite(tag_val.get("macro_pr_auc"))
        else:
            f1 = float(val.get("macro_f1", 0.0))
            score = f1
        improved = score > self.best_f1
        self.best_f1, self.stale = (score, 0) if improved else (self.best_f1, self.stale + 1)
        metrics = {
            "epoch": epoch,
            "train_loss": trained["train_loss"],
            "val_score": score,
            "val_accuracy": float(val.get("accuracy", math.nan)),
            "val_macro_f1": f1,
            "val_log_loss": float(val.get("log_loss", math.nan)),
            "val_per_class_f1": val.get("per_class_f1", {}),
            "val_mood_accuracy": float(val["mood"].get("accuracy", math.nan))
            if "mood" in val
            else math.nan,
            **{k: v for k, v in trained.items() if k != "train_loss"},
            **(
                {
                    f"val_tag_{k}": _finite(tag_val.get(k))
                    for k in ("macro_roc_auc", "micro_roc_auc", "macro_pr_auc", "macro_f1")
                }
                if tag_val
                else {}
            ),
            "precision": self.precision.name,
            "torch_threads": torch.get_num_threads(),
            "niceness": os.nice(0),  # this thread's; threads inherit it
        }
        if _world_size() > 1:
            metrics["replicas_in_sync"] = _replicas_in_sync(self.net)
        self.history.append({k: v for k, v in metrics.items() if k != "val_per_class_f1"})
        patience = self.config.early_stopping_patience
        return metrics, patience > 0 and self.stale >= patience

    def state(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint holds after ``epoch`` (:func:`genreflow.checkpoint.save`)."""
        config = self.config
        state = {
            "state_dict": self.inner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
            "best_f1": self.best_f1,
            "stale": self.stale,
            "history": self.history,
            "labels": {
                "genre": self.genres,
                "mood": self.moods,
                "tags": list(self.tags.titles) if self.tags else [],
                "tag_parents": dict(self.tags.parents) if self.tags else {},
            },
            "task": config.task,
            "tag_thresholds": list(self.tag_thresholds),
            "token_spec": self.spec.to_dict(),
            "model": {
                "name": config.model,
                "preset": config.preset,
                "overrides": dict(config.model_overrides),
                # every hyperparameter as built: the checkpoint rebuilds the same model
                # after a later genreflow changes a preset
                "hyperparameters": dict(self.model.hp),
            },
            "lyrics_vocab": list(self.words) if self.words else [],
            "val_metrics": {k: v for k, v in metrics.items() if k != "val_per_class_f1"},
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state


def _finite(value: Any) -> float:
    """A metric as a number for comparisons and Ray's reports: NaN and None become 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def epoch_seed(seed: int, epoch: int | None, rank: int) -> int:
    """The shuffle seed of one worker's epoch: every epoch and every worker shuffles
    differently, and the same run seed gives the same order (after a resume too)."""
    return (seed * 1_000_003 + (epoch or 0) * 1_009 + rank) % 2**31


def build_for_training(
    config: TrainConfig, spec: TokenSpec, n_genres: int, vocab_size: int | None, n_tags: int = 0
) -> GenreModel:
    """The model a run would train (for checks before any worker starts)."""
    return build_model(
        config.model,
        spec,
        n_genres=n_genres,
        preset=config.preset,
        overrides=config.model_overrides,
        vocab_size=vocab_size,
        task=config.task,
        n_tags=n_tags,
    )
