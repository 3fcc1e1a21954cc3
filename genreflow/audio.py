"""Decoding: the only module that opens audio files.

soundfile (libsndfile with mpg123/vorbis/flac) decodes MP3, OGG, FLAC and WAV in
process, reading only the frames a clip needs, so a 20-minute file costs what 30 s
cost. Anything libsndfile cannot open falls back to ``librosa.load`` (audioread) for
local files. Every failure is an :class:`AudioError` with a stable ``kind``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from genreflow import storage
from genreflow.errors import AudioError, StorageError

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-4  # -80 dBFS: a clip whose peak stays below this is silent
TRUNCATION_TOLERANCE = 0.95  # decoded / declared frames below this: the file is cut short


@dataclass(frozen=True)
class Clip:
    """A decoded, mono, fixed-length clip."""

    samples: np.ndarray  # [clip_samples] float32 at the target sample rate
    duration_s: float  # audio actually present before padding, in seconds
    source_sample_rate: int
    source_channels: int


def load_audio(uri: str, *, max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """Decode the start of an audio file.

    Args:
        uri: local path, ``file://`` or any pyarrow filesystem URI (``s3://...``).
        max_duration_s: decode at most this much from the start; ``None`` for all.

    Returns:
        ``(samples [channels, n_samples] float32, sample_rate)``.

    Raises:
        AudioError: ``missing``, ``empty``, ``undecodable`` or ``truncated``.
    """
    try:
        fs, path = storage.resolve(uri)
        info = fs.get_file_info(path)
    except (StorageError, OSError) as exc:
        raise AudioError("missing", f"cannot reach {uri!r}: {exc}") from exc
    if info.type.name == "NotFound":
        raise AudioError("missing", f"no such file: {uri!r}")
    if info.type.name != "File":
        raise AudioError("missing", f"not a file: {uri!r}")
    if info.size == 0:
        raise AudioError("empty", f"empty file (0 bytes): {uri!r}")
    local = not storage.is_remote(uri)
    try:
        if local:
            return _read_soundfile(path, uri, max_duration_s)
        with fs.open_input_file(path) as handle:
            return _read_soundfile(handle, uri, max_duration_s)
    except sf.LibsndfileError as exc:
        if local:
            return _read_librosa(path, uri, max_duration_s, reason=str(exc))
        raise AudioError("undecodable", f"not a readable audio file: {uri!r} ({exc})") from exc


def _read_soundfile(source: Any, uri: str, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(source) as f:
        sample_rate = int(f.samplerate)
        declared = int(f.frames)
        wanted = declared
        if max_duration_s is not None:
            wanted = min(declared, math.ceil(max_duration_s * sample_rate))
        data = f.read(frames=wanted, dtype="float32", always_2d=True)  # [n, channels]
    if data.shape[0] == 0:
        raise AudioError("undecodable", f"no audio frames could be decoded from {uri!r}")
    if data.shape[0] < TRUNCATION_TOLERANCE * wanted:
        raise AudioError(
            "truncated",
            f"{uri!r} is cut short: its header declares {declared / sample_rate:.2f} s "
            f"but only {data.shape[0] / sample_rate:.2f} s decode",
        )
    return np.ascontiguousarray(data.T), sample_rate


def _read_librosa(
    path: str, uri: str, max_duration_s: float | None, *, reason: str
) -> tuple[np.ndarray, int]:
    import librosa

    try:
        with warnings.catch_warnings():  # librosa warns before and while falling back
            warnings.simplefilter("ignore")
            samples, sample_rate = librosa.load(path, sr=None, mono=False, duration=max_duration_s)
    except Exception as exc:  # audioread raises a zoo of types; all mean "cannot decode"
        raise AudioError(
            "undecodable",
            f"not a readable audio file: {os.path.basename(path)!r} ({reason}; "
            f"fallback decoder: {type(exc).__name__})",
        ) from exc
    samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    if samples.shape[1] == 0:
        raise AudioError("undecodable", f"no audio frames could be decoded from {uri!r}")
    return samples, int(sample_rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: ``[channels, n]`` -> ``[n]`` float32.

    A running sum over the channel rows: ``np.mean(axis=0)`` on interleaved data is
    several times slower for the 2-6 channels audio has.
    """
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    mono = samples[0].astype(np.float32, copy=True)
    for channel in samples[1:]:
        mono += channel
    if samples.shape[0] > 1:
        mono *= np.float32(1.0 / samples.shape[0])
    return mono


def resample(samples: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono audio ``[n]`` with soxr (high quality); a no-op at equal rates."""
    if orig_sr == target_sr:
        return samples
    return np.asarray(soxr.resample(samples, orig_sr, target_sr, quality="HQ"), dtype=np.float32)


def fix_length(samples: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim or zero-pad ``[n]`` to exactly ``n_samples``."""
    if samples.shape[0] >= n_samples:
        return samples[:n_samples]
    return np.pad(samples, (0, n_samples - samples.shape[0]))


def load_clip(
    uri: str,
    *,
    sample_rate: int,
    clip_s: float,
    min_duration_s: float = 0.0,
    allow_silent: bool = False,
) -> Clip:
    """Decode, downmix, resample and fix the length of one clip.

    Args:
        uri: the audio file.
        sample_rate: target rate in Hz.
        clip_s: clip length in seconds: longer audio is trimmed (and never decoded
            past it), shorter audio zero-padded.
        min_duration_s: shorter audio is an error of kind ``too_short``.
        allow_silent: keep clips whose peak is below -80 dBFS instead of raising
            ``silent``.

    Raises:
        AudioError: any decode failure, ``too_short`` or ``silent``.
    """
    raw, source_sr = load_audio(uri, max_duration_s=clip_s)
    mono = resample(to_mono(raw), orig_sr=source_sr, target_sr=sample_rate)
    if not np.all(np.isfinite(mono)):
        raise AudioError("undecodable", f"{uri!r} decodes to NaN or infinite samples")
    duration_s = min(mono.shape[0] / sample_rate, clip_s)
    if duration_s < min_duration_s:
        raise AudioError(
            "too_short",
            f"{uri!r} holds {duration_s:.2f} s of audio, less than min_duration_s="
            f"{min_duration_s:g}; lower min_duration_s to pad such clips instead",
        )
    if not allow_silent and (mono.size == 0 or float(np.max(np.abs(mono))) < SILENCE_PEAK):
        raise AudioError(
            "silent",
            f"{uri!r} is silent (peak below -80 dBFS); set allow_silent=true to keep it",
        )
    return Clip(
        samples=fix_length(mono, round(clip_s * sample_rate)),
        duration_s=float(duration_s),
        source_sample_rate=source_sr,
        source_channels=int(raw.shape[0]),
    )
