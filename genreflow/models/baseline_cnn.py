"""Paper 003: the plain CNN, the yardstick the attention models must beat.

Five conv layers (16-32-64-128-64 filters, 3x3, ReLU, 2x2 max pooling, Dropout2d 0.25)
run on every token with shared weights; token features are averaged over real tokens,
then FC 32 -> classes. The 32-unit layer is the embedding.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

from torch import Tensor, nn

from genreflow.models.base import GenreModel, ModelOutput, mask_or_ones, per_token
from genreflow.tokens import TokenSpec


class BaselineCNN(GenreModel):
    name = "baseline_cnn"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "input_pool": 2,
            "channels": [8, 16, 16, 32, 16],
            "hidden": 16,
            "dropout": 0.05,
            "batch_norm": True,
        },
        "paper": {
            "input_pool": 1,
            "channels": [16, 32, 64, 128, 64],
            "hidden": 32,
            "dropout": 0.25,
            "batch_norm": False,
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
        channels = [1, *p["channels"]]
        layers: list[nn.Module] = []
        for a, c in pairwise(channels):
            layers.append(nn.Conv2d(a, c, 3, padding=1))
            if p["batch_norm"]:  # not in the paper; lets the tiny preset train in a few epochs
                layers.append(nn.BatchNorm2d(c))
            layers += [
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Dropout2d(p["dropout"]),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Sequential(
            nn.Linear(channels[-1], int(p["hidden"])), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(int(p["hidden"]), n_genres)

    def forward(
        self, tokens: Tensor, token_mask: Tensor | None = None, lyrics: Tensor | None = None
    ) -> ModelOutput:
        x = self.check_tokens(tokens, token_mask)  # [b, t, mels, frames]
        b, t = x.shape[:2]
        mask = mask_or_ones(token_mask, x).float()  # [b, t]
        f = self.features(per_token(x, self.input_pool)).reshape(b, t, -1)  # [b, t, c]
        pooled = (f * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        embedding = self.hidden(pooled)  # [b, hidden]
        return ModelOutput(self.classifier(embedding), None, None, embedding)
