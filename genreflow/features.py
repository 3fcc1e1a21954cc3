"""Log-mel spectrograms: pure functions over numpy arrays, and the same in torch.

:func:`log_mel` equals ``librosa.power_to_db(librosa.feature.melspectrogram(...))``
(centred frames, zero padding, periodic Hann window, Slaney mel filters, power 2) to
float32 rounding, but computes the filterbank product sparsely: each mel band covers a
few FFT bins, so the product costs a fraction of a dense matmul.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.fft
import scipy.sparse

from genreflow.tokens import TokenSpec

AMIN = 1e-10  # power floor before the log
FLOOR_DB = -100.0  # 10 * log10(AMIN), exact: padding and silence hold this value


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear to 1 kHz, then
    logarithmic."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / F_SP
    log_part = hz >= MIN_LOG_HZ
    return np.where(
        log_part, MIN_LOG_MEL + np.log(np.maximum(hz, MIN_LOG_HZ) / MIN_LOG_HZ) / LOG_STEP, mel
    )


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = mel >= MIN_LOG_MEL
    return np.where(log_part, MIN_LOG_HZ * np.exp(LOG_STEP * (mel - MIN_LOG_MEL)), F_SP * mel)


F_SP, MIN_LOG_HZ = 200.0 / 3, 1000.0
MIN_LOG_MEL, LOG_STEP = MIN_LOG_HZ / F_SP, np.log(6.4) / 27.0


@functools.lru_cache(maxsize=16)
def mel_filters(
    *, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """Slaney-normalised triangular mel filters ``[n_mels, n_fft // 2 + 1]`` float32, as
    ``librosa.filters.mel`` makes them (its defaults: Slaney scale and area
    normalisation): numpy only, so a GPU front end needs no librosa."""
    top = sample_rate / 2.0 if fmax is None else float(fmax)
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(top), n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    weights = np.zeros((n_mels, len(bins)), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    weights.flags.writeable = False  # cached: shared by every caller
    return weights


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> scipy.sparse.csr_matrix:
    """:func:`mel_filters` as a sparse matrix (each band covers a few FFT bins)."""
    return scipy.sparse.csr_matrix(
        mel_filters(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    )


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int) -> np.ndarray:
    # periodic Hann, as librosa's get_window("hann", n_fft, fftbins=True)
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


def power_spectrogram(samples: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Centred, zero-padded STFT power ``[n_fft // 2 + 1, 1 + len // hop_length]`` float32.

    Args:
        samples: mono audio ``[n_samples]``.
    """
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples [n_samples], got shape {samples.shape}")
    padded = np.pad(samples.astype(np.float32, copy=False), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    spectrum = scipy.fft.rfft(frames * _hann(n_fft), axis=1)  # [frames, bins] complex64
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    return np.ascontiguousarray(power.T)  # [bins, frames]


def log_mel(
    samples: np.ndarray,
    *,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Log-mel spectrogram in dB (reference power 1, floor -100 dB).

    Args:
        samples: mono audio ``[n_samples]`` at ``sample_rate``.

    Returns:
        ``[n_mels, 1 + n_samples // hop_length]`` float32.
    """
    mel = mel_power(
        samples,
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
    )
    return compress_mel(mel, "db")


LOG1P_GAIN = 10000.0  # musicnn's compression: log10(1 + 10000 mel)


def mel_power(
    samples: np.ndarray,
    *,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Mel power spectrogram ``[n_mels, 1 + n_samples // hop_length]`` float32 (what
    ``librosa.feature.melspectrogram`` returns, to float32 rounding)."""
    power = power_spectrogram(samples, n_fft=n_fft, hop_length=hop_length)
    filters = mel_filterbank(
        sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax
    )
    return np.asarray(filters @ power, dtype=np.float32)


def log_mel_for_spec(samples: np.ndarray, spec: TokenSpec) -> np.ndarray:
    """The spec's compressed mel spectrogram ``[n_mels, spec.n_frames]`` float32: dB as
    :func:`log_mel` for ``scale="db"``, ``log10(1 + 10000 mel)`` for ``"log1p"``."""
    mel = mel_power(
        samples,
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
    )
    return compress_mel(mel, spec.scale)


def compress_mel(mel: np.ndarray, scale: str) -> np.ndarray:
    """Mel power -> the spec's scale: dB (floor -100) or ``log10(1 + 10000 mel)``."""
    if scale == "log1p":
        return np.log10(np.float32(1.0) + np.float32(LOG1P_GAIN) * mel).astype(np.float32)
    db = 10.0 * np.log10(np.maximum(mel, AMIN))
    return np.maximum(db, np.float32(FLOOR_DB)).astype(np.float32, copy=False)


def log_mel_torch(samples: Any, spec: TokenSpec) -> Any:
    """:func:`log_mel_for_spec` in torch, on the device ``samples`` is on, for a batch.

    Args:
        samples: mono audio ``[batch, n_samples]`` float32 tensor at ``spec.sample_rate``.

    Returns:
        ``[batch, n_mels, 1 + n_samples // hop_length]`` float32, compressed as
        ``spec.scale`` says (dB or log1p). On a GPU it agrees with the numpy front end to
        float32 rounding of the FFT (bench/gpu_check.py states the tolerance).
    """
    import torch

    device = samples.device
    filters = mel_filters(
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
    )
    spectrum = torch.stft(
        samples.float(),
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        window=torch.from_numpy(_hann(spec.n_fft)).to(device),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # [batch, bins, frames]
    power = spectrum.real.square() + spectrum.imag.square()
    mel = torch.matmul(torch.from_numpy(filters.copy()).to(device), power)
    if spec.scale == "log1p":
        return torch.log10(1.0 + LOG1P_GAIN * mel)
    db = 10.0 * torch.log10(torch.clamp(mel, min=AMIN))
    return torch.clamp(db, min=FLOOR_DB)
