from __future__ import annotations

import librosa
import numpy as np
import pytest

from genreflow.features import log_mel, log_mel_for_spec
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
