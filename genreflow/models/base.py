"""What every genreflow model shares: the output type, input checks, attention helpers.

Input: tokens ``[batch, n_tokens, n_mels, token_frames]`` in dB (float16 or float32),
an optional ``token_mask [batch, n_tokens]`` (True = real token), optional lyrics ids
``[batch, sentences, words]``. Output: :class:`ModelOutput`.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from genreflow.errors import ConfigError, ShapeError
from genreflow.tokens import TokenSpec

# Tokens are log-mel dB (floor -100); this affine puts typical music near [-2, 2].
INPUT_SHIFT_DB = 40.0
INPUT_SCALE_DB = 20.0


M = TypeVar("M", bound=nn.Module)


class ModelOutput(NamedTuple):
    """One output type for every model (a tuple, so DDP and tracing handle it)."""

    genre_logits: Tensor  # [batch, n_genres]
    mood_logits: Tensor | None  # [batch, n_moods] where the model has a mood head
    token_weights: Tensor | None  # [batch, n_tokens], sums to 1 over real tokens
    embedding: Tensor  # [batch, embedding_dim]: the signature, or the penultimate layer
    tag_logits: Tensor | None = None  # [batch, n_tags]: multi-label genres (sigmoid), for
    # a model of task multi (its genre head) or both (a head of its own on the embedding)


TASKS = ("single", "multi", "both")


class GenreModel(nn.Module):
    """Base class: holds the token spec and label counts, checks inputs."""

    name: ClassVar[str]
    presets: ClassVar[dict[str, dict[str, Any]]]
    has_mood: ClassVar[bool] = False
    uses_lyrics: ClassVar[bool] = False
    task: str = "single"  # set by set_task: single | multi | both

    def __init__(
        self,
        spec: TokenSpec,
        *,
        n_genres: int,
        n_moods: int = 3,
        preset: str = "tiny",
        overrides: dict[str, Any] | None = None,
    ) -> None:
        """Check label counts and resolve the preset into ``self.hp`` (with ``overrides``)."""
        super().__init__()
        if n_genres < 2:
            raise ConfigError(f"{self.name}: need at least 2 genres, got n_genres={n_genres}")
        if n_moods < 2:
            raise ConfigError(f"{self.name}: need at least 2 moods, got n_moods={n_moods}")
        self.spec = spec
        self.n_genres = n_genres
        self.n_moods = n_moods
        self.hp = self.hyperparameters(preset, overrides)
        self.input_pool = int(self.hp["input_pool"])

    @classmethod
    def hyperparameters(
        cls, preset: str, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A preset's hyperparameters with ``overrides`` applied (unknown keys refused)."""
        if preset not in cls.presets:
            raise ConfigError(
                f"model {cls.name!r} has no preset {preset!r}; choose one of {sorted(cls.presets)}"
            )
        params = dict(cls.presets[preset])
        for key, value in (overrides or {}).items():
            if key not in params:
                raise ConfigError(
                    f"model {cls.name!r} has no hyperparameter {key!r}; known: {sorted(params)}"
                )
            params[key] = value
        return params

    def check_tokens(self, tokens: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Validate ``tokens`` and return them normalised as float32.

        Raises:
            ShapeError: wrong rank or shape (names the expected one), or NaN/inf values.
        """
        _, n_mels, frames = self.spec.token_shape
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (n_mels, frames):
            raise ShapeError(
                f"{self.name} expects tokens [batch, n_tokens, {n_mels}, {frames}] "
                f"(batch, n_tokens, n_mels, token_frames), got {list(tokens.shape)}"
            )
        if tokens.shape[1] < 1 or tokens.shape[0] < 1:
            raise ShapeError(f"{self.name}: empty token batch {list(tokens.shape)}")
        if token_mask is not None and tuple(token_mask.shape) != tuple(tokens.shape[:2]):
            raise ShapeError(
                f"{self.name}: token_mask must be [batch, n_tokens] = {list(tokens.shape[:2])}, "
                f"got {list(token_mask.shape)}"
            )
        x = tokens.float()
        # one reduction pass: a finite sum means every value is finite; only a sum that
        # is not (NaN/inf inside, or finite values overflowing) takes the exact check
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise ShapeError(f"{self.name}: tokens hold NaN or infinite values")
        if self.spec.scale == "log1p":  # already in [0, ~7]; the first batch norm centres it
            return x
        return (x + INPUT_SHIFT_DB) / INPUT_SCALE_DB

    def set_task(self, task: str, *, n_tags: int = 0) -> None:
        """Make this a multi-label model: for ``multi`` the genre head (built with
        ``n_genres = n_tags``) gives ``tag_logits``; for ``both`` a linear head of
        ``n_tags`` on the embedding does, beside the single-label genre head. Any model
        gets this without code of its own: the head's width is the embedding's, found by
        one forward pass of silent tokens.

        Raises:
            ConfigError: an unknown task, or fewer than 2 tags.
        """
        if task not in TASKS:
            raise ConfigError(f"task must be one of {list(TASKS)}, got {task!r}")
        self.task = task
        if task == "single":
            return
        if n_tags < 2:
            raise ConfigError(f"task={task} needs at least 2 multi-label genres, got {n_tags}")
        if task == "both":
            was_training = self.training
            self.eval()
            with torch.no_grad():
                silent = torch.full((2, *self.spec.token_shape), -100.0)
                width = int(self(silent).embedding.shape[1])
            self.train(was_training)
            self.tag_head = nn.Linear(width, n_tags)
        self.register_forward_hook(_with_tags)

    def pretrained_parts(self) -> list[tuple[nn.Module, str]]:
        """The parts that start from pretrained weights, each with the name of its
        weights (a pretrained front end: ``(frontend, "MSD_musicnn")``); a model learned
        from scratch has none. Training puts them in once before the first epoch
        (:func:`genreflow.pretrained.load_pretrained`); a checkpoint already holds them."""
        return []

    def forward(
        self,
        tokens: Tensor,
        token_mask: Tensor | None = None,
        lyrics: Tensor | None = None,
    ) -> ModelOutput:
        raise NotImplementedError


def _with_tags(model: nn.Module, _args: Any, out: ModelOutput) -> ModelOutput:
    """The forward hook of :meth:`GenreModel.set_task`: fills ``tag_logits``."""
    if out.tag_logits is not None:
        return out
    if model.task == "multi":
        return out._replace(tag_logits=out.genre_logits)
    head = model.get_submodule("tag_head")
    return out._replace(tag_logits=head(out.embedding))


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax where ``mask`` is True; masked entries get exactly 0, and a row with no
    True entry gets all zeros instead of NaN."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(weights, nan=0.0) * mask


class AttentionPool(nn.Module):
    """Additive attention pooling: ``a_t = softmax_t(v^T tanh(W h_t + b))``; returns the
    weights ``[batch, n]`` and ``sum_t a_t h_t``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.context = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        scores = self.context(torch.tanh(self.proj(h))).squeeze(-1)  # [batch, n]
        weights = masked_softmax(scores, mask)
        return weights, torch.einsum("bn,bnd->bd", weights, h)


def conv_block(
    c_in: int, c_out: int, *, kernel: int, pool: int, dropout: float = 0.0
) -> nn.Sequential:
    """Conv -> batch norm -> ReLU -> max pool (-> dropout)."""
    before, after = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2  # "same", even kernels too
    layers: list[nn.Module] = [
        nn.ZeroPad2d((before, after, before, after)),
        nn.Conv2d(c_in, c_out, kernel, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(pool, ceil_mode=True),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every ``[ZeroPad2d ->] Conv2d -> BatchNorm2d`` run of a model in eval mode
    into one convolution, in place: the same outputs (to float rounding) with one
    pass over each activation instead of three. For inference only: the folded model
    must not be trained or saved as a checkpoint.

    Raises:
        ValueError: the model is in training mode (batch norm would use batch statistics).
    """
    if model.training:
        raise ValueError("fuse_for_inference needs a model in eval mode")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
                continue
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
            pad = module[i - 1] if i > 0 else None
            if isinstance(pad, nn.ZeroPad2d) and fused.padding == (0, 0):
                left, right, top, bottom = pad.padding
                if left == right and top == bottom:  # the conv pads evenly itself
                    fused.padding = (top, left)
                    module[i - 1] = nn.Identity()
            module[i], module[i + 1] = fused, nn.Identity()
    return model


def inference_model(model: M, device: torch.device) -> M:
    """What a labeller runs: ``model`` in eval mode with batch norm folded into its
    convolutions (:func:`fuse_for_inference`, in place), no token-feature cache in a
    pretrained front end, channels_last as in training
    (the conv stacks run 1.2-1.8x faster on CPU), on ``device``."""
    fuse_for_inference(model.eval())
    for module in model.modules():  # a labeller sees each token once: no feature cache
        if hasattr(module, "cache_tokens"):
            setattr(module, "cache_tokens", 0)  # noqa: B010 - any module that has one
    model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def token_encoder(channels: list[int], out_dim: int) -> nn.Sequential:
    """The CNN applied to every token: 3x3 conv blocks over ``channels`` (the first is the
    input's), global average pooling, then a ReLU projection to ``out_dim``."""
    return nn.Sequential(
        *[conv_block(a, b, kernel=3, pool=2) for a, b in pairwise(channels)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels[-1], out_dim),
        nn.ReLU(inplace=True),
    )


def per_token(tokens: Tensor, input_pool: int) -> Tensor:
    """``[batch, n_tokens, mels, frames]`` -> ``[batch * n_tokens, 1, mels', frames']``
    (time-distributed: every token through the same CNN)."""
    b, t, m, f = tokens.shape
    x = tokens.reshape(b * t, 1, m, f)
    if input_pool > 1:
        x = nn.functional.avg_pool2d(x, input_pool, ceil_mode=True)
    return x


def mask_or_ones(token_mask: Tensor | None, tokens: Tensor) -> Tensor:
    if token_mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return token_mask.bool()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
