"""Full-length tracks: a clip from the middle read by seeking (bytes bounded by the clip,
not the file), tokens spread over a whole 20-minute track, digests of bounded cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genreflow.audio import load_window
from genreflow.decode import decode_tokens, file_digest
from genreflow.label import signature_moments
from genreflow.tokens import TokenSpec

SAMPLE_RATE = 16000
LONG_S = 20 * 60.0


def _bytes_read() -> int:
    """This process's bytes read through read(2) (``/proc/self/io`` ``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-minute MP3 whose pitch rises with time: 200 Hz + 1 Hz per second."""
    t = np.arange(int(LONG_S * SAMPLE_RATE)) / SAMPLE_RATE
    freq = 200.0 + t
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
    path = tmp_path_factory.mktemp("long") / "long.mp3"
    sf.write(str(path), wave.astype(np.float32), SAMPLE_RATE, format="MP3")
    return path


def _pitch(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[spectrum.argmax()])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_a_middle_clip_reads_a_bounded_share_of_a_20_minute_file(long_mp3: Path) -> None:
    size = long_mp3.stat().st_size
    spec = TokenSpec(sample_rate=SAMPLE_RATE, clip_s=30.0)  # clip_from: middle, the default
    before = _bytes_read()
    decoded = decode_tokens(["long"], [str(long_mp3)], spec, digests=True)
    read = _bytes_read() - before
    assert not decoded.errors
    assert decoded.offsets[0] == pytest.approx((LONG_S - 30) / 2, abs=0.5)
    # the clip's own bytes, a frame search and the three digest samples: a tenth of the file
    assert read < 0.1 * size + 300_000, (read, size)


def test_the_window_is_where_it_claims_to_be(long_mp3: Path) -> None:
    for at in (0.0, 300.0, 1100.0):
        window = load_window(str(long_mp3), length_s=2.0, offset=at)
        assert window.offset_s == pytest.approx(at)
        assert window.track_s == pytest.approx(LONG_S, abs=0.1)
        # the pitch at the window's middle: 200 Hz + 1 Hz per second of track time
        assert _pitch(window.samples[0]) == pytest.approx(200 + at + 1.0, abs=15)


def test_clip_from_start_and_seconds(long_mp3: Path) -> None:
    start = decode_tokens(
        ["a"], [str(long_mp3)], TokenSpec(sample_rate=SAMPLE_RATE, clip_from="start")
    )
    at = decode_tokens(["a"], [str(long_mp3)], TokenSpec(sample_rate=SAMPLE_RATE, clip_from="90"))
    assert start.offsets == [0.0] and at.offsets[0] == pytest.approx(90.0)
    assert not np.array_equal(start.tokens, at.tokens)


def test_tokens_over_the_whole_track_put_moments_anywhere_in_it(long_mp3: Path) -> None:
    spec = TokenSpec(sample_rate=SAMPLE_RATE, token_layout="track", n_tokens=10, token_s=3.0)
    decoded = decode_tokens(["long"], [str(long_mp3)], spec)
    assert not decoded.errors and decoded.tokens.shape == (1, *spec.token_shape)
    assert decoded.durations[0] == pytest.approx(LONG_S, abs=0.1)
    # every token at its place: its loudest mel band follows the rising pitch
    bands = decoded.tokens[0].astype(np.float32).mean(axis=2).argmax(axis=1)
    assert np.all(np.diff(bands) >= 0) and bands[-1] > bands[0]
    weights = np.full(10, 0.1)
    weights[9] = 0.5  # the last token decided the label
    moments = signature_moments(weights, spec, float(decoded.durations[0]), count=10)
    assert moments[0]["start_s"] == pytest.approx(LONG_S - 3.0, abs=0.1)
    assert min(m["start_s"] for m in moments) == 0.0
    assert max(m["end_s"] for m in moments) == pytest.approx(LONG_S, abs=0.1)


def test_moments_of_a_middle_clip_are_in_track_time() -> None:
    spec = TokenSpec(clip_s=30.0, n_tokens=10, token_s=4.0)
    weights = np.arange(10, dtype=float)
    (moment,) = signature_moments(weights, spec, 30.0, count=1, offset_s=100.0)
    assert moment["start_s"] >= 100.0 and moment["end_s"] <= 130.0


def test_digest_cost_does_not_grow_with_the_file(tmp_path: Path, long_mp3: Path) -> None:
    copy = tmp_path / "copy.mp3"
    copy.write_bytes(long_mp3.read_bytes())
    assert file_digest(str(copy)) == file_digest(str(long_mp3))
    changed = bytearray(long_mp3.read_bytes())
    changed[-10] ^= 0xFF  # the end differs: another digest
    other = tmp_path / "other.mp3"
    other.write_bytes(bytes(changed))
    assert file_digest(str(other)) != file_digest(str(long_mp3))
    before = _bytes_read()
    file_digest(str(long_mp3))
    assert _bytes_read() - before < 4 * 64 * 1024
