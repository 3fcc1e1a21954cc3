from __future__ import annotations

import numpy as np
import pytest

from genreflow.errors import ConfigError, SpecMismatchError
from genreflow.tokens import TokenSpec, check_same_spec, cut_tokens, preset


def test_paper000_default_is_ten_4s_tokens_with_about_1s_overlap() -> None:
    spec = TokenSpec()
    assert spec.token_shape == (10, 128, 172)
    times = spec.token_times_s()
    assert times[0, 0] == 0.0
    assert times[-1, 1] <= spec.clip_s
    assert times[-1, 1] > spec.clip_s - 0.2  # the tokens span the clip
    overlap = times[:-1, 1] - times[1:, 0]
    assert np.all((overlap > 0.9) & (overlap < 1.3))
    assert np.allclose(times[:, 1] - times[:, 0], 4.0, atol=0.03)


def test_paper001_preset_is_ten_128x128_slices_3s_apart() -> None:
    spec = preset("paper001")
    assert spec.token_shape == (10, 128, 128)
    starts = spec.token_times_s()[:, 0]
    assert np.allclose(np.diff(starts), 3.0, atol=0.03)


def test_cut_tokens_takes_the_windows_the_spec_names() -> None:
    spec = TokenSpec(clip_s=10.0, n_tokens=4, token_s=2.0, n_mels=16, n_fft=512)
    mel = np.random.default_rng(0).standard_normal((16, spec.n_frames)).astype(np.float32)
    tokens = cut_tokens(mel, spec)
    assert tokens.shape == spec.token_shape
    for i, start in enumerate(spec.token_starts()):
        np.testing.assert_array_equal(tokens[i], mel[:, start : start + spec.token_frames])


def test_cut_tokens_refuses_a_spectrogram_of_another_shape() -> None:
    spec = TokenSpec()
    with pytest.raises(SpecMismatchError, match=r"\[n_mels, n_frames\]"):
        cut_tokens(np.zeros((64, spec.n_frames), np.float32), spec)


def test_a_spec_whose_tokens_do_not_fit_the_clip_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="n_tokens"):
        TokenSpec(clip_s=10.0, n_tokens=10, token_s=4.0, stride_s=3.0)
    with pytest.raises(ConfigError, match="n_mels"):
        TokenSpec(n_fft=128, n_mels=128)
    with pytest.raises(ConfigError, match="unknown token spec preset"):
        preset("paper999")


def test_spec_hash_is_stable_and_mismatch_names_both_sides() -> None:
    a, b = TokenSpec(), preset("paper001")
    assert a.spec_hash() == TokenSpec().spec_hash() != b.spec_hash()
    assert TokenSpec.from_dict(a.to_dict()) == a
    check_same_spec(a, TokenSpec(), a_name="x", b_name="y")
    with pytest.raises(SpecMismatchError, match=r"dataset.*checkpoint.*token_s"):
        check_same_spec(a, b, a_name="dataset", b_name="checkpoint")
