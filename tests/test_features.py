from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from genreflow.features import log_mel, log_mel_for_spec, log_mel_torch, mel_filters
from genreflow.tokens import TokenSpec


@pytest.mark.parametrize("n_fft,hop,n_mels", [(2048, 512, 128), (1024, 256, 64)])
def test_log_mel_equals_librosa(n_fft: int, hop: int, n_mels: int) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(3 * 22050) / 22050
    y = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = log_mel(y, sample_rate=22050, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=y, sr=22050, n_fft=n_fft, hop_length=hop, n_mels=n_mels, pad_mode="constant"
        ),
        ref=1.0,
        amin=1e-10,
        top_db=None,
    )
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_log_mel_of_silence_is_the_floor_not_nan() -> None:
    spec = TokenSpec(clip_s=2.0, n_tokens=1, token_s=1.0)
    mel = log_mel_for_spec(np.zeros(spec.clip_samples, np.float32), spec)
    assert mel.shape == (spec.n_mels, spec.n_frames)
    assert np.all(mel == -100.0)


def test_log_mel_is_invariant_to_batching_the_signal_in_time() -> None:
    # frames of a long signal equal the frames of its independent halves (away from edges)
    y = np.random.default_rng(2).standard_normal(22050 * 2).astype(np.float32)
    whole = log_mel(y, sample_rate=22050, n_fft=2048, hop_length=512, n_mels=64)
    first = log_mel(y[:22050], sample_rate=22050, n_fft=2048, hop_length=512, n_mels=64)
    np.testing.assert_allclose(whole[:, 2:30], first[:, 2:30], atol=1e-3)


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [(22050, 2048, 128, 0.0, None), (16000, 512, 96, 0.0, 8000.0), (44100, 4096, 40, 20.0, None)],
)
def test_mel_filters_are_librosas_to_the_bit(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> None:
    ours = mel_filters(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ref = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
    )
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_torch_front_end_equals_the_numpy_one() -> None:
    spec = TokenSpec(clip_s=4.0, n_tokens=2, token_s=2.0, n_mels=64)
    t = np.arange(spec.clip_samples) / spec.sample_rate
    rng = np.random.default_rng(3)
    clips = np.stack(
        [np.sin(2 * np.pi * 220 * t) * 0.3, 0.05 * rng.standard_normal(t.size), np.zeros(t.size)]
    ).astype(np.float32)
    ours = log_mel_torch(torch.from_numpy(clips), spec).numpy()
    ref = np.stack([log_mel_for_spec(c, spec) for c in clips])
    assert ours.shape == ref.shape == (3, spec.n_mels, spec.n_frames)
    # float32 FFTs round differently: the bins within 80 dB of a clip's peak agree to
    # 0.05 dB (bench/gpu_check.py's tolerance on a GPU), the quieter ones approach the floor
    loud = ref > ref.max(axis=(1, 2), keepdims=True) - 80.0
    assert np.abs(ours - ref)[loud].max() < 0.05
    np.testing.assert_allclose(ours, ref, atol=1.0)
    assert np.all(ours[2] == -100.0)  # silence is the floor, not -inf
