"""Paper 001: attention-based CNN with a genre head and a valence-mood head.

Four conv layers with 2x2 kernels (64/128/256/512 filters at paper size), batch norm and
max pooling run on every token (shared weights). Over every spatial position ``x_i`` of
the final feature maps of all real tokens, a parallel attention layer computes
``a = softmax(W^T x)`` and ``sum_i a_i x_i``; max and average pooling over the same
positions are concatenated with it ("Pool4Combined" + attention), dropout 0.5, then the
two heads. A token's importance is the attention mass of its positions.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genreflow.models.base import (
    GenreModel,
    ModelOutput,
    conv_block,
    mask_or_ones,
    masked_softmax,
    per_token,
)
from genreflow.tokens import TokenSpec


class MultitaskAttentionCNN(GenreModel):
    name = "multitask_attention_cnn"
    has_mood = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"input_pool": 2, "channels": [8, 16, 32, 64], "dropout": 0.5},
        "paper": {"input_pool": 1, "channels": [64, 128, 256, 512], "dropout": 0.5},
    }

    def __init__(
        self,
        spec: TokenSpec,
        *,
        n_genres: int,
        n_moods: int = 3,
        preset: str = "tiny",
        **overrides: Any,
    ) -> None:
        super().__init__(
            spec, n_genres=n_genres, n_moods=n_moods, preset=preset, overrides=overrides
        )
        p = self.hp
        channels = [1, *p["channels"]]
        self.features = nn.Sequential(
            *[conv_block(a, b, kernel=2, pool=2) for a, b in pairwise(channels)]
        )
        c = channels[-1]
        self.score = nn.Linear(c, 1, bias=False)  # W in a = softmax(W^T x)
        self.dropout = nn.Dropout(p["dropout"])
        self.genre_head = nn.Linear(3 * c, n_genres)
        self.mood_head = nn.Linear(3 * c, n_moods)

    def forward(
        self, tokens: Tensor, token_mask: Tensor | None = None, lyrics: Tensor | None = None
    ) -> ModelOutput:
        x = self.check_tokens(tokens, token_mask)  # [b, t, mels, frames]
        b, t = x.shape[:2]
        mask = mask_or_ones(token_mask, x)  # [b, t]
        maps = self.features(per_token(x, self.input_pool))  # [b*t, c, h, w]
        c, hw = maps.shape[1], maps.shape[2] * maps.shape[3]
        positions = maps.reshape(b, t, c, hw).transpose(2, 3).reshape(b, t * hw, c)  # [b, t*hw, c]
        pos_mask = mask.repeat_interleave(hw, dim=1)  # [b, t*hw]
        alpha = masked_softmax(self.score(positions).squeeze(-1), pos_mask)  # [b, t*hw]
        attended = torch.einsum("bn,bnc->bc", alpha, positions)  # [b, c]
        maxed = positions.masked_fill(~pos_mask[..., None], float("-inf")).amax(dim=1)
        maxed = torch.nan_to_num(maxed, neginf=0.0)
        count = pos_mask.sum(dim=1, keepdim=True).clamp(min=1)
        averaged = (positions * pos_mask[..., None]).sum(dim=1) / count
        features = self.dropout(torch.cat([maxed, averaged, attended], dim=1))  # [b, 3c]
        token_weights = alpha.reshape(b, t, hw).sum(dim=2)  # [b, t]
        return ModelOutput(
            self.genre_head(features), self.mood_head(features), token_weights, attended
        )
