"""Log-mel spectrograms: pure functions over numpy arrays.

:func:`log_mel` equals ``librosa.power_to_db(librosa.feature.melspectrogram(...))``
(centred frames, zero padding, periodic Hann window, Slaney mel filters, power 2) to
float32 rounding, but computes the filterbank product sparsely: each mel band covers a
few FFT bins, so the product costs a fraction of a dense matmul.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import scipy.sparse

from genreflow.tokens import TokenSpec

AMIN = 1e-10  # power floor before the log
FLOOR_DB = -100.0  # 10 * log10(AMIN), exact: padding and silence hold this value


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> scipy.sparse.csr_matrix:
    """Slaney-normalised mel filters as a sparse ``[n_mels, n_fft // 2 + 1]`` float32 matrix."""
    import librosa  # imported lazily: its first import is slow and only this needs it

    dense = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
    )
    return scipy.sparse.csr_matrix(dense)


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
    power = power_spectrogram(samples, n_fft=n_fft, hop_length=hop_length)
    filters = mel_filterbank(
        sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax
    )
    mel = np.asarray(filters @ power, dtype=np.float32)  # [n_mels, frames]
    db = 10.0 * np.log10(np.maximum(mel, AMIN))
    return np.maximum(db, np.float32(FLOOR_DB)).astype(np.float32, copy=False)


def log_mel_for_spec(samples: np.ndarray, spec: TokenSpec) -> np.ndarray:
    """:func:`log_mel` with every parameter from ``spec``; ``[n_mels, spec.n_frames]``."""
    return log_mel(
        samples,
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
    )
