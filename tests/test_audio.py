from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genreflow.audio import load_audio, load_clip, to_mono
from genreflow.decode import tokenize_track
from genreflow.errors import AudioError
from genreflow.tokens import TokenSpec
from tests.audio_fixtures import tone, write_audio, write_tone


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * sample_rate / samples.size)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_each_format_decodes_to_the_tone_it_holds(tmp_path: Path, suffix: str) -> None:
    path = write_tone(tmp_path / f"a{suffix}", 440.0, duration_s=2.0, sample_rate=44100, channels=2)
    clip = load_clip(str(path), sample_rate=22050, clip_s=3.0)
    assert clip.samples.shape == (3 * 22050,)
    assert clip.source_channels == 2
    assert clip.source_sample_rate == 44100
    assert clip.duration_s == pytest.approx(2.0, abs=0.1)
    assert dominant_hz(clip.samples[:22050], 22050) == pytest.approx(440.0, abs=2.0)
    assert np.all(clip.samples[int(2.2 * 22050) :] == 0)  # zero-padded to the clip


def test_8khz_mono_is_resampled(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "low.wav", 1000.0, duration_s=2.0, sample_rate=8000)
    clip = load_clip(str(path), sample_rate=22050, clip_s=2.0)
    assert clip.source_sample_rate == 8000
    assert dominant_hz(clip.samples, 22050) == pytest.approx(1000.0, abs=2.0)


def test_six_channels_at_48khz_are_downmixed_and_resampled(tmp_path: Path) -> None:
    t = np.arange(2 * 48000) / 48000
    channels = np.zeros((t.size, 6), np.float32)
    channels[:, 0] = 0.6 * np.sin(2 * np.pi * 500 * t)  # only one channel carries the tone
    path = write_audio(tmp_path / "surround.flac", channels, 48000)
    samples, rate = load_audio(str(path))
    assert samples.shape == (6, t.size) and rate == 48000
    clip = load_clip(str(path), sample_rate=22050, clip_s=2.0)
    assert clip.source_channels == 6
    assert dominant_hz(clip.samples, 22050) == pytest.approx(500.0, abs=2.0)
    assert np.max(np.abs(clip.samples)) == pytest.approx(0.1, abs=0.01)  # the mean of 6 channels


def test_to_mono_equals_the_channel_mean() -> None:
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    np.testing.assert_allclose(to_mono(x), x.mean(axis=0), atol=1e-6)


def test_a_twenty_minute_file_decodes_only_the_clip(tmp_path: Path) -> None:
    sample_rate = 44100
    minute = tone(220.0, duration_s=60.0, sample_rate=sample_rate, channels=2)
    path = tmp_path / "long.flac"
    with sf.SoundFile(str(path), "w", sample_rate, 2, format="FLAC", subtype="PCM_16") as f:
        for _ in range(20):
            f.write(minute)
    assert sf.info(str(path)).duration == pytest.approx(1200.0)
    tracemalloc.start()
    clip = load_clip(str(path), sample_rate=22050, clip_s=30.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert clip.duration_s == 30.0
    # the whole file as float32 stereo is 423 MB; the clip needs about 10 MB
    assert peak < 60 * 2**20


@pytest.mark.parametrize(
    "name,content,kind",
    [
        ("empty.mp3", b"", "empty"),
        ("text.mp3", b"this is not audio at all\n" * 40, "undecodable"),
        ("noise.ogg", bytes(range(256)) * 8, "undecodable"),
    ],
)
def test_unusable_files_raise_audio_errors_with_a_kind(
    tmp_path: Path, name: str, content: bytes, kind: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError) as info:
        load_clip(str(path), sample_rate=22050, clip_s=30.0)
    assert info.value.kind == kind
    assert name in str(info.value)


def test_a_missing_file_is_a_missing_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as info:
        load_clip(str(tmp_path / "nope.mp3"), sample_rate=22050, clip_s=30.0)
    assert info.value.kind == "missing"


def test_a_truncated_mp3_is_a_truncated_error(tmp_path: Path) -> None:
    whole = write_tone(
        tmp_path / "whole.mp3", 440.0, duration_s=20.0, sample_rate=44100, channels=2
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioError) as info:
        load_clip(str(cut), sample_rate=22050, clip_s=30.0)
    assert info.value.kind == "truncated"


def test_silence_is_an_error_unless_allowed(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "silence.wav", np.zeros((22050 * 3, 1), np.float32), 22050)
    with pytest.raises(AudioError) as info:
        load_clip(str(path), sample_rate=22050, clip_s=5.0)
    assert info.value.kind == "silent"
    clip = load_clip(str(path), sample_rate=22050, clip_s=5.0, allow_silent=True)
    assert clip.duration_s == pytest.approx(3.0)
    assert not np.any(clip.samples)


def test_a_half_second_clip_is_too_short_by_default_and_padded_when_allowed(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "short.wav", 440.0, duration_s=0.5)
    with pytest.raises(AudioError) as info:
        load_clip(str(path), sample_rate=22050, clip_s=30.0, min_duration_s=1.0)
    assert info.value.kind == "too_short"
    spec = TokenSpec()
    tokens, duration_s = tokenize_track(str(path), spec, min_duration_s=0.0)
    assert duration_s == pytest.approx(0.5, abs=0.01)
    assert tokens.shape == spec.token_shape and tokens.dtype == np.float16
    assert np.all(tokens[1:] == -100.0)  # padding is the log floor, first token holds the tone
    assert tokens[0].max() > -50.0
