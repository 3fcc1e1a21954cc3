"""Audio written as real files for tests: tones, chords, noise, in several formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", None),
}


def tone(
    freq_hz: float = 440.0,
    *,
    duration_s: float = 3.0,
    sample_rate: int = 22050,
    channels: int = 1,
    amplitude: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """A sine (plus quiet noise) ``[n, channels]`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    mono = amplitude * np.sin(2 * np.pi * freq_hz * t) + 0.01 * rng.standard_normal(t.shape)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``[n, channels]`` samples in the format named by the file's suffix."""
    fmt, subtype = FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, format=fmt, subtype=subtype)
    return path


def write_tone(path: Path, freq_hz: float = 440.0, **kwargs: float) -> Path:
    sample_rate = int(kwargs.pop("sample_rate", 22050))
    return write_audio(path, tone(freq_hz, sample_rate=sample_rate, **kwargs), sample_rate)  # type: ignore[arg-type]
