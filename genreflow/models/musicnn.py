"""musicnn (Pons & Serra, 2019) in PyTorch: the pretrained music front end.

The architecture of ``musicnn==0.1.0``'s ``models.build_musicnn`` (ISC licence), layer
for layer, so its TensorFlow weights load unchanged (:mod:`genreflow.pretrained.musicnn`
converts them). Input: a log-compressed mel patch ``[batch, frames, 96]``
(``log10(1 + 10000 * mel)``, 16 kHz, n_fft 512, hop 256; 187 frames = 3 s in training,
any length works). Three parts:

- front end: timbral filters (7 x 38 and 7 x 67 over time x frequency) and temporal
  filters (128, 64 and 32 frames x 1), each max-pooled over frequency: ``[b, 561, t]``;
- mid end: three 1-d convolutions of 64 channels with residual connections, densely
  concatenated with the front end: ``[b, 753, t]``;
- back end: max and mean over time, batch norm (the *pooled* features, 1506-d), a
  200-unit dense layer (the *penultimate* features) and 50 sigmoid tags.

Batch norm everywhere uses TensorFlow's epsilon (1e-3) and follows the ReLU, as there.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from genreflow.errors import ConfigError
from genreflow.tokens import TokenSpec

N_MELS = 96
PATCH_FRAMES = 187  # 3 s at 16 kHz, hop 256: the length the weights were trained on
TF_BN_EPS = 1e-3

MSD_TAGS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s",
    "chill", "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)  # fmt: skip
MTT_TAGS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip


class MusicnnOutput(NamedTuple):
    logits: Tensor  # [batch, 50]: sigmoid gives the taggram row
    penultimate: Tensor  # [batch, 200]
    mean_pool: Tensor  # [batch, 753]
    max_pool: Tensor  # [batch, 753]
    pooled: Tensor  # [batch, 1506]: max and mean pools after musicnn's batch norm


def _bn1d(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=TF_BN_EPS)


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=TF_BN_EPS)


class _FreqPooledConv(nn.Module):
    """Conv over ``[b, 1, time, freq]`` -> ReLU -> batch norm -> max over frequency."""

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.norm = _bn2d(filters)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.pad(x, (0, 0, *self.time_pad))  # [b, 1, t + pad, f]
        x = self.norm(torch.relu(self.conv(x)))  # [b, filters, t, f']
        return x.amax(dim=3)  # [b, filters, t]


def _same_pad(kernel: int) -> tuple[int, int]:
    """TensorFlow's "same" padding: the extra frame of an even kernel goes after."""
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2


class Musicnn(nn.Module):
    """musicnn with ``n_tags`` outputs (50 for both pretrained models)."""

    def __init__(self, *, n_tags: int = 50, midend_filters: int = 64, dense_units: int = 200):
        super().__init__()
        timbral, temporal = int(1.6 * 128), int(1.6 * 32)  # 204, 51 as in the original
        self.input_norm = _bn2d(1)
        self.timbral = nn.ModuleList(
            [
                _FreqPooledConv(timbral, (7, int(0.4 * N_MELS)), (3, 3)),
                _FreqPooledConv(timbral, (7, int(0.7 * N_MELS)), (3, 3)),
            ]
        )
        self.temporal = nn.ModuleList(
            [_FreqPooledConv(temporal, (k, 1), _same_pad(k)) for k in (128, 64, 32)]
        )
        front = 2 * timbral + 3 * temporal  # 561
        self.mid = nn.ModuleList(
            [nn.Conv1d(front, midend_filters, 7, padding=3)]
            + [nn.Conv1d(midend_filters, midend_filters, 7, padding=3) for _ in range(2)]
        )
        self.mid_norm = nn.ModuleList([_bn1d(midend_filters) for _ in range(3)])
        self.features = front + 3 * midend_filters  # 753
        self.pool_norm = _bn1d(2 * self.features)
        self.dense = nn.Linear(2 * self.features, dense_units)
        self.dense_norm = _bn1d(dense_units)
        self.dropout = nn.Dropout(0.5)
        self.tags = nn.Linear(dense_units, n_tags)

    def frame_features(self, patches: Tensor) -> Tensor:
        """Front and mid end: ``[b, frames, 96]`` -> ``[b, 753, frames]``."""
        x = self.input_norm(patches.unsqueeze(1))  # [b, 1, t, 96]
        front = torch.cat([block(x) for block in (*self.timbral, *self.temporal)], dim=1)
        outputs = [front]  # [b, 561, t]
        h = front
        for i, (conv, norm) in enumerate(zip(self.mid, self.mid_norm, strict=True)):
            y = norm(torch.relu(conv(h)))  # [b, 64, t]
            h = y if i == 0 else y + h
            outputs.append(h)
        return torch.cat(outputs, dim=1)  # [b, 753, t]

    def forward(self, patches: Tensor) -> MusicnnOutput:
        """``patches [batch, frames, 96]`` -> logits, penultimate, mean and max pools."""
        features = self.frame_features(patches)  # [b, 753, t]
        max_pool = features.amax(dim=2)
        mean_pool = features.mean(dim=2)
        # TensorFlow flattened [b, 753, 2 (max, mean)]: features interleaved
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # [b, 1506]
        normed = self.pool_norm(pooled)
        penultimate = self.dense_norm(torch.relu(self.dense(self.dropout(normed))))  # [b, 200]
        logits = self.tags(self.dropout(penultimate))  # [b, 50]
        return MusicnnOutput(logits, penultimate, mean_pool, max_pool, normed)


PRETRAINED = ("MSD_musicnn", "MTT_musicnn")


def check_musicnn_spec(spec: TokenSpec, *, model: str) -> None:
    """Refuse a token spec musicnn's weights were not trained on.

    Raises:
        ConfigError: names every field that differs from the ``musicnn`` preset.
    """
    want: dict[str, object] = {"sample_rate": 16000, "n_fft": 512, "hop_length": 256}
    want.update(n_mels=N_MELS, scale="log1p")
    bad = {k: getattr(spec, k) for k, v in want.items() if getattr(spec, k) != v}
    if bad:
        raise ConfigError(
            f"{model}: a musicnn front end needs the `musicnn` token spec preset "
            f"({want}); this dataset's spec has {bad}: ingest with spec=musicnn"
        )


FEATURES: dict[str, int] = {"pooled": 1506, "penultimate": 200}


class MusicnnFrontend(nn.Module):
    """musicnn as a token encoder: ``[n, 96, frames]`` tokens -> ``[n, out_dim]``
    features, ``pooled`` (1506-d, the default) or ``penultimate`` (200-d). The pooled
    features keep more of a recording's character: over the real-music catalog of
    bench/quality.py their same-album neighbours are 0.48 against 0.43 for the
    penultimate layer (bench/RESULTS.md). Frozen (the default) the front end stays in
    eval mode and gets no gradient; with ``trainable`` it is fine-tuned with the rest of
    the model. :func:`genreflow.pretrained.load_pretrained` puts the converted weights in
    (a checkpoint holds them too, so labelling needs no musicnn install); the
    architecture knows nothing of the conversion.

    A frozen front end on the CPU remembers its outputs by token content (a BLAKE2 digest
    of the token's bytes) in a bounded LRU of at most ``cache_bytes``: a training worker
    then runs musicnn once per token of its shard, not once per epoch, while the shard's
    tokens fit (85k tokens of pooled features). Augmented tokens differ every time and
    simply miss. On a GPU it recomputes (cheaper than copying tokens to the host to hash
    them)."""

    cache_bytes = 512 * 2**20

    def __init__(self, weights: str, *, trainable: bool, features: str = "pooled") -> None:
        super().__init__()
        if weights not in PRETRAINED:
            raise ConfigError(f"unknown musicnn weights {weights!r}; choose one of {PRETRAINED}")
        if features not in FEATURES:
            raise ConfigError(
                f"unknown musicnn features {features!r}; choose one of {sorted(FEATURES)}"
            )
        self.weights, self.trainable, self.features = weights, trainable, features
        self.out_dim = FEATURES[features]
        self.cache_tokens = self.cache_bytes // (4 * self.out_dim)
        self.net = Musicnn()
        self.net.requires_grad_(trainable)
        self._cache: OrderedDict[bytes, Tensor] = OrderedDict()

    def _features(self, tokens: Tensor) -> Tensor:
        out = self.net(tokens.transpose(1, 2))  # [n, frames, 96] in
        return out.pooled if self.features == "pooled" else out.penultimate

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Put ``state`` (converted musicnn weights, see :mod:`genreflow.pretrained`) into
        the network; cached outputs of the old weights are dropped."""
        self.net.load_state_dict(state)
        self._cache.clear()

    def _apply(self, fn: Any, recurse: bool = True) -> MusicnnFrontend:
        self._cache.clear()  # moved or cast: cached outputs belong to the old weights
        super()._apply(fn, recurse)
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _frozen_features(self, tokens: Tensor) -> Tensor:
        if tokens.device.type != "cpu" or self.cache_tokens <= 0:
            with torch.no_grad():
                return self._features(tokens)
        host = tokens.detach().contiguous().numpy()
        keys = [hashlib.blake2b(t.tobytes(), digest_size=16).digest() for t in host]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            with torch.no_grad():
                fresh = self._features(tokens[missing])  # [m, out_dim]
            for i, row in zip(missing, fresh, strict=True):
                self._cache[keys[i]] = row.clone()
        for key in keys:
            self._cache.move_to_end(key)
        rows = torch.stack([self._cache[key] for key in keys])
        while len(self._cache) > self.cache_tokens:
            self._cache.popitem(last=False)
        return rows

    def train(self, mode: bool = True) -> MusicnnFrontend:
        super().train(mode and self.trainable)  # a frozen front end keeps its statistics
        return self

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [n, 96, frames]`` -> ``[n, out_dim]``."""
        if self.trainable:
            return self._features(tokens)
        return self._frozen_features(tokens.float())
