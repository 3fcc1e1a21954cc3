"""The token spec: the one place the audio front end is defined, and the cut into tokens.

A track becomes a fixed-length mono clip, a log-mel spectrogram ``[n_mels, n_frames]``
and then ``n_tokens`` overlapping windows ``[n_tokens, n_mels, token_frames]`` along
time (paper 000: 10 tokens of 4 s with about 1 s overlap; paper 001: 10 slices of 3 s,
128 x 128). The spec is data: it is written into every dataset manifest and every
checkpoint, and :func:`check_same_spec` refuses a mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from genreflow.errors import ConfigError, SpecMismatchError

SCALES = ("db", "log1p")
LAYOUTS = ("clip", "track")


@dataclass(frozen=True)
class TokenSpec:
    """Audio front end and token layout.

    ``stride_s`` is the hop between token starts; ``None`` spreads the tokens evenly
    so the first starts at 0 s and the last ends at the clip's end. ``scale`` is how
    mel power is compressed: ``db`` (``10 log10``, floor -100 dB) or ``log1p``
    (``log10(1 + 10000 mel)``, musicnn's input).

    Where the audio comes from in a track longer than the clip: ``clip_from`` is
    ``start``, ``middle`` (FMA's own 30 s clips are cut from the middle of each track) or
    a number of seconds into the track; only that window is decoded. ``token_layout``
    ``track`` instead spreads the ``n_tokens`` tokens evenly over the whole track, each
    decoded on its own (memory does not grow with the track), so a signature's moments
    can fall anywhere in a 20-minute song; ``clip_from`` then plays no part.
    """

    sample_rate: int = 22050
    clip_s: float = 30.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    n_tokens: int = 10
    token_s: float = 4.0
    stride_s: float | None = None
    scale: str = "db"
    clip_from: str = "middle"
    token_layout: str = "clip"

    def __post_init__(self) -> None:
        positive = ("sample_rate", "clip_s", "n_fft", "hop_length", "n_mels", "n_tokens", "token_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"token spec: {name} must be > 0, got {getattr(self, name)}")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ConfigError(
                f"token spec: n_mels={self.n_mels} exceeds the {self.n_fft // 2 + 1} "
                f"frequency bins of n_fft={self.n_fft}; lower n_mels or raise n_fft"
            )
        nyquist = self.sample_rate / 2
        if self.fmax is not None and not (self.fmin < self.fmax <= nyquist):
            raise ConfigError(
                f"token spec: need fmin < fmax <= {nyquist:g} Hz, got fmin={self.fmin}, "
                f"fmax={self.fmax}"
            )
        if self.scale not in SCALES:
            raise ConfigError(
                f"token spec: scale must be one of {list(SCALES)}, got {self.scale!r}"
            )
        if self.token_layout not in LAYOUTS:
            raise ConfigError(
                f"token spec: token_layout must be one of {list(LAYOUTS)}, got "
                f"{self.token_layout!r}"
            )
        self.clip_offset_s(self.clip_s * 4)  # validates clip_from
        if self.stride_s is not None and self.stride_s <= 0:
            raise ConfigError(f"token spec: stride_s must be > 0, got {self.stride_s}")
        if self.token_frames < 1:
            raise ConfigError(
                f"token spec: token_s={self.token_s} is shorter than one hop "
                f"({self.hop_length / self.sample_rate:.4f} s)"
            )
        last_end = int(self.token_starts()[-1]) + self.token_frames
        if last_end > self.n_frames:
            raise ConfigError(
                f"token spec: {self.n_tokens} tokens of {self.token_s} s every "
                f"{self.stride_frames * self.hop_length / self.sample_rate:.3f} s need "
                f"{last_end} frames but a {self.clip_s} s clip has {self.n_frames}; "
                "lower n_tokens, token_s or stride_s, or raise clip_s"
            )

    @property
    def clip_samples(self) -> int:
        return round(self.clip_s * self.sample_rate)

    @property
    def n_frames(self) -> int:
        """Frames of the centred STFT of one clip."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def token_frames(self) -> int:
        return round(self.token_s * self.sample_rate / self.hop_length)

    @property
    def stride_frames(self) -> int:
        if self.stride_s is not None:
            return max(1, round(self.stride_s * self.sample_rate / self.hop_length))
        if self.n_tokens == 1:
            return self.token_frames
        return max(1, (self.n_frames - self.token_frames) // (self.n_tokens - 1))

    @property
    def token_shape(self) -> tuple[int, int, int]:
        """``(n_tokens, n_mels, token_frames)``."""
        return (self.n_tokens, self.n_mels, self.token_frames)

    def token_starts(self) -> np.ndarray:
        """First frame of every token, ``[n_tokens]`` int64."""
        return np.arange(self.n_tokens, dtype=np.int64) * self.stride_frames

    def token_times_s(self) -> np.ndarray:
        """Start and end of every token in seconds within the clip, ``[n_tokens, 2]``."""
        seconds_per_frame = self.hop_length / self.sample_rate
        starts = self.token_starts() * seconds_per_frame
        ends = np.minimum(starts + self.token_frames * seconds_per_frame, self.clip_s)
        return np.stack([starts, ends], axis=1)

    def clip_offset_s(self, track_s: float) -> float:
        """Where the clip starts in a track of ``track_s`` seconds (``token_layout`` clip):
        0 for ``start`` and for a track no longer than the clip.

        Raises:
            ConfigError: ``clip_from`` is neither ``start``, ``middle`` nor seconds >= 0.
        """
        if self.clip_from == "start":
            return 0.0
        if self.clip_from == "middle":
            return max(0.0, (track_s - self.clip_s) / 2.0)
        try:
            offset = float(self.clip_from)
        except ValueError:
            offset = -1.0
        if not (offset >= 0 and np.isfinite(offset)):
            raise ConfigError(
                f"token spec: clip_from must be start, middle or seconds >= 0, got "
                f"{self.clip_from!r}"
            )
        return max(0.0, min(offset, track_s - self.clip_s))

    def track_token_starts_s(self, track_s: float) -> list[float]:
        """``token_layout`` track: the start of every token in a track of ``track_s``
        seconds, ``[n_tokens]``, evenly spread from 0 to the last token's end at the
        track's end (a track shorter than a token: every token at 0)."""
        span = max(0.0, float(track_s) - self.token_s)
        if self.n_tokens == 1:
            return [span / 2.0]
        return [float(t) for t in np.linspace(0.0, span, self.n_tokens)]

    def token_times_in_track(self, *, duration_s: float, offset_s: float = 0.0) -> np.ndarray:
        """Start and end of every token in seconds within the *track*, ``[n_tokens, 2]``.

        Args:
            duration_s: layout ``clip``: audio present in the clip; ``track``: the
                track's length.
            offset_s: layout ``clip``: where the clip starts in the track.
        """
        if self.token_layout == "track":
            starts = np.asarray(self.track_token_starts_s(duration_s))
            ends = np.minimum(starts + self.token_s, max(float(duration_s), self.token_s))
            return np.stack([starts, ends], axis=1)
        return self.token_times_s() + float(offset_s)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # specs written before these keys existed hash as before (and meant the defaults
        # named here: the clip from the start, scale db)
        for key, old in (("scale", "db"), ("clip_from", "start"), ("token_layout", "clip")):
            if data[key] == old:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenSpec:
        """A spec as a manifest or checkpoint stores it (:meth:`to_dict`); one written
        before ``clip_from`` existed took its clip from the start."""
        from genreflow.config import from_dict

        return from_dict(cls, {"clip_from": "start", **data}, where="spec.")

    @classmethod
    def from_preset(cls, name: str) -> TokenSpec:
        """A named spec; see :data:`PRESETS`."""
        return preset(name)

    def spec_hash(self) -> str:
        """A short content hash; equal specs hash equal across processes and machines."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


PRESETS: dict[str, TokenSpec] = {
    # Paper 000: 10 tokens of 4 s, about 1.1 s overlap, spanning the 30 s clip.
    "paper000": TokenSpec(),
    # Paper 001: 10 slices of ~3 s, 128 mels x 128 frames each.
    "paper001": TokenSpec(token_s=128 * 512 / 22050, stride_s=3.0),
    # musicnn's input (genreflow.models.musicnn): 16 kHz, 96 mels, n_fft 512, hop 256,
    # log10(1 + 10000 mel); 10 tokens of 187 frames (3 s), the patch its weights know.
    "musicnn": TokenSpec(
        sample_rate=16000,
        n_fft=512,
        hop_length=256,
        n_mels=96,
        token_s=187 * 256 / 16000,
        scale="log1p",
    ),
}


def preset(name: str) -> TokenSpec:
    """A named token spec (``paper000``, ``paper001``, ``musicnn``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown token spec preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None


def cut_tokens(log_mel: np.ndarray, spec: TokenSpec) -> np.ndarray:
    """Cut a clip's log-mel spectrogram into tokens.

    Args:
        log_mel: ``[n_mels, n_frames]`` for one fixed-length clip.
        spec: the token layout.

    Returns:
        ``[n_tokens, n_mels, token_frames]``, a copy in the input's dtype.

    Raises:
        SpecMismatchError: the spectrogram's shape is not the spec's.
    """
    expected = (spec.n_mels, spec.n_frames)
    if log_mel.shape != expected:
        raise SpecMismatchError(
            f"log-mel has shape {log_mel.shape}, the token spec expects {expected} "
            "([n_mels, n_frames])"
        )
    windows = np.lib.stride_tricks.sliding_window_view(log_mel, spec.token_frames, axis=1)
    # windows: [n_mels, n_frames - token_frames + 1, token_frames]
    picked = windows[:, spec.token_starts(), :]  # [n_mels, n_tokens, token_frames]
    return np.ascontiguousarray(picked.transpose(1, 0, 2))


def check_same_spec(a: TokenSpec, b: TokenSpec, *, a_name: str, b_name: str) -> None:
    """Raise :class:`SpecMismatchError` naming both sides and every differing field."""
    if a == b:
        return
    da, db = a.to_dict(), b.to_dict()
    diffs = ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])
    raise SpecMismatchError(
        f"token spec of {a_name} ({a.spec_hash()}) differs from {b_name} ({b.spec_hash()}): "
        f"{diffs}. Re-ingest with the same spec, or use a checkpoint trained on this spec."
    )
