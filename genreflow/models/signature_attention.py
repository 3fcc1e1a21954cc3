"""Paper 000: attention-guided spectrogram sequence model and its attention signature.

One CNN runs on every token with shared weights (time-distributed) and gives token
embeddings ``e_t``; multi-head self-attention with learned token positions relates the
tokens; additive attention pooling gives each token an importance ``a_t`` (softmax over
real tokens) and the classifier reads ``sum_t a_t h_t``. The track's *signature* is
``sum_t a_t e_t``: the CNN embeddings weighted by the softmax of the attention scores
(paper 000, section 3.2) — the vector the recommendation index is built on.

``frontend`` chooses the token encoder: ``cnn`` (learned from scratch, the ``tiny`` and
``paper`` presets) or pretrained musicnn (``MSD_musicnn``/``MTT_musicnn``, the
``musicnn`` preset; :class:`~genreflow.models.musicnn.MusicnnFrontend`), frozen or with
``finetune``. With musicnn, ``e_t`` is its feature of the token (``features``: the
1506-d batch-normed max and mean pools, or the 200-d penultimate layer), so the signature
lives in the pretrained space; attention reads a projection of it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genreflow.errors import ShapeError
from genreflow.models.base import (
    AttentionPool,
    GenreModel,
    ModelOutput,
    mask_or_ones,
    per_token,
    token_encoder,
)
from genreflow.models.musicnn import MusicnnFrontend, check_musicnn_spec
from genreflow.tokens import TokenSpec


class SignatureAttention(GenreModel):
    name = "signature_attention"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "input_pool": 2,
            "channels": [8, 16, 32],
            "d_model": 32,
            "heads": 2,
            "ffn": 64,
            "attn_hidden": 32,
            "dropout": 0.1,
            "frontend": "cnn",
            "finetune": False,
        },
        "paper": {
            "input_pool": 1,
            "channels": [32, 64, 128, 256],
            "d_model": 128,
            "heads": 4,
            "ffn": 256,
            "attn_hidden": 128,
            "dropout": 0.3,
            "frontend": "cnn",
            "finetune": False,
        },
        "musicnn": {
            "input_pool": 1,
            "channels": [],
            "d_model": 128,
            "heads": 4,
            "ffn": 256,
            "attn_hidden": 128,
            "dropout": 0.5,
            "frontend": "MSD_musicnn",
            "finetune": False,
            "features": "pooled",
        },
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
        d = int(p["d_model"])
        self.frontend: MusicnnFrontend | None = None
        if p["frontend"] == "cnn":
            self.token_cnn: nn.Module = token_encoder([1, *p["channels"]], d)
            self.project: nn.Module = nn.Identity()
        else:
            check_musicnn_spec(spec, model=self.name)
            self.frontend = MusicnnFrontend(
                str(p["frontend"]),
                trainable=bool(p["finetune"]),
                features=str(p.get("features", "pooled")),
            )
            self.token_cnn = nn.Identity()
            self.project = nn.Sequential(nn.Linear(self.frontend.out_dim, d), nn.ReLU())
        self.position = nn.Parameter(torch.randn(1, spec.n_tokens, d) * 0.02)
        self.attention = nn.MultiheadAttention(
            d, int(p["heads"]), dropout=p["dropout"], batch_first=True
        )
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, int(p["ffn"])), nn.ReLU(inplace=True), nn.Linear(int(p["ffn"]), d)
        )
        self.norm2 = nn.LayerNorm(d)
        self.pool = AttentionPool(d, int(p["attn_hidden"]))
        self.classifier = nn.Sequential(nn.Dropout(p["dropout"]), nn.Linear(d, n_genres))

    def pretrained_parts(self) -> list[tuple[nn.Module, str]]:
        return [(self.frontend, self.frontend.weights)] if self.frontend is not None else []

    def forward(
        self, tokens: Tensor, token_mask: Tensor | None = None, lyrics: Tensor | None = None
    ) -> ModelOutput:
        x = self.check_tokens(tokens, token_mask)  # [b, t, mels, frames]
        b, t = x.shape[:2]
        if t > self.spec.n_tokens:
            raise ShapeError(f"{self.name}: at most {self.spec.n_tokens} tokens per track, got {t}")
        mask = mask_or_ones(token_mask, x)  # [b, t]
        if not bool(mask.any(dim=1).all()):
            raise ShapeError(f"{self.name}: every track needs at least one real token")
        if self.frontend is not None:
            e = self.frontend(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)  # [b, t, 1506]
        else:
            e = self.token_cnn(per_token(x, self.input_pool)).reshape(b, t, -1)  # [b, t, d]
        h = self.project(e) + self.position[:, :t]  # [b, t, d]
        a, _ = self.attention(h, h, h, key_padding_mask=~mask, need_weights=False)
        h = self.norm1(h + a)
        h = self.norm2(h + self.ffn(h))  # [b, t, d]
        weights, pooled = self.pool(h, mask)  # [b, t], [b, d]
        signature = torch.einsum("bt,btd->bd", weights, e)  # [b, d]
        return ModelOutput(self.classifier(pooled), None, weights, signature)
