"""A synthetic demo catalog: real MP3/OGG files in genres that differ the way genres do.

Each genre has its own tempo range, rhythm pattern, instruments (timbre), harmony and
dynamics; every track draws its tempo, key, mode, instrument mix, swing and loudness at
random within its genre, so a model has to learn the genre rather than memorise a
file. Mode and tempo drive a valence, and lyrics are drawn from genre and mood word
pools (instrumental genres often have none), so mood and lyrics carry signal too.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from genreflow.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050


@dataclass(frozen=True)
class GenreStyle:
    tempo: tuple[float, float]  # beats per minute
    drums: str  # rhythm pattern name
    lead: str  # lead instrument timbre
    bass: str  # bass timbre
    chords: str  # chord timbre
    sevenths: bool  # jazz harmony
    swing: float  # 0 straight, 0.33 triplet swing
    loudness: tuple[float, float]  # peak gain range
    drive: float  # saturation amount
    major_prob: float  # chance of a major key (raises valence)
    lyrics_prob: float  # chance a track has lyrics
    words: tuple[str, ...]


STYLES: dict[str, GenreStyle] = {
    "ambient": GenreStyle(
        (60, 80),
        "none",
        "pad",
        "sine",
        "pad",
        False,
        0.0,
        (0.25, 0.4),
        0.0,
        0.5,
        0.3,
        ("drift", "ocean", "breath", "cloud", "still", "horizon", "float", "glass", "slow"),
    ),
    "classical": GenreStyle(
        (70, 110),
        "none",
        "string",
        "string",
        "string",
        False,
        0.0,
        (0.3, 0.6),
        0.0,
        0.5,
        0.15,
        ("aria", "river", "autumn", "candle", "garden", "lament", "symphony", "grace"),
    ),
    "electronic": GenreStyle(
        (120, 132),
        "four",
        "square",
        "square",
        "pad",
        False,
        0.0,
        (0.6, 0.8),
        0.4,
        0.6,
        0.7,
        ("pulse", "neon", "machine", "signal", "laser", "circuit", "bass", "strobe", "night"),
    ),
    "hiphop": GenreStyle(
        (82, 96),
        "boombap",
        "pluck",
        "808",
        "sine",
        False,
        0.12,
        (0.6, 0.85),
        0.3,
        0.45,
        0.95,
        ("street", "rhyme", "flow", "crew", "hustle", "block", "mic", "cipher", "verse"),
    ),
    "jazz": GenreStyle(
        (100, 170),
        "swing",
        "pluck",
        "walk",
        "tri",
        True,
        0.33,
        (0.3, 0.55),
        0.0,
        0.5,
        0.5,
        ("blue", "smoke", "velvet", "midnight", "saxophone", "cafe", "moon", "swing"),
    ),
    "rock": GenreStyle(
        (110, 150),
        "rock",
        "dist",
        "saw",
        "dist",
        False,
        0.0,
        (0.7, 0.9),
        2.5,
        0.5,
        0.9,
        ("guitar", "road", "fire", "thunder", "rebel", "highway", "loud", "wild", "stone"),
    ),
}
MOOD_WORDS = {
    "sad": ("tears", "alone", "cold", "grey", "lost", "rain", "goodbye", "broken"),
    "neutral": ("walk", "day", "time", "city", "window", "morning", "story", "road"),
    "happy": ("sunshine", "smile", "dance", "bright", "joy", "summer", "golden", "shine"),
}


# --- instruments -----------------------------------------------------------------------


def _env(n: int, attack_s: float, decay_s: float) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    attack = np.minimum(1.0, t / max(attack_s, 1e-4))
    return attack * np.exp(-t / max(decay_s, 1e-4))


_TABLE = 2048  # a power of two: wrap-around is a bit mask


@functools.lru_cache(maxsize=64)
def _wavetable(weights: tuple[float, ...]) -> np.ndarray:
    grid = 2 * np.pi * np.arange(_TABLE) / _TABLE
    table = np.zeros(_TABLE)
    for k, w in enumerate(weights, start=1):
        if w:
            table += w * np.sin(k * grid)
    return table


def _harmonics(freq: float, n: int, weights: list[float], vibrato: float = 0.0) -> np.ndarray:
    """A periodic wave of the given harmonic weights, by wavetable lookup: ``[n]``."""
    top = max(1, min(len(weights), int((SAMPLE_RATE / 2) // max(freq, 1.0))))
    position = np.arange(n) * (freq * _TABLE / SAMPLE_RATE)
    if vibrato:
        t = np.arange(n) / SAMPLE_RATE
        position += vibrato * _TABLE / (2 * np.pi) * np.sin(2 * np.pi * 5.5 * t)
    index = position.astype(np.int64) & (_TABLE - 1)
    return _wavetable(tuple(weights[:top]))[index]


def note(timbre: str, freq: float, dur_s: float, rng: np.random.Generator) -> np.ndarray:
    """One note of an instrument, ``[samples]``."""
    n = max(1, int(dur_s * SAMPLE_RATE))
    if timbre == "sine":
        return _harmonics(freq, n, [1.0]) * _env(n, 0.01, dur_s)
    if timbre == "tri":
        return _harmonics(freq, n, [1, 0, 1 / 9, 0, 1 / 25]) * _env(n, 0.01, dur_s * 0.6)
    if timbre in ("saw", "dist"):
        wave = _harmonics(freq, n, [1 / k for k in range(1, 16)])
        wave *= _env(n, 0.005, dur_s * 1.5)
        return np.tanh(3.0 * wave) if timbre == "dist" else wave
    if timbre == "square":
        return _harmonics(freq, n, [1 / k if k % 2 else 0 for k in range(1, 14)]) * _env(
            n, 0.003, dur_s * 0.5
        )
    if timbre == "pluck":
        weights = [1 / k**1.5 for k in range(1, 10)]
        return _harmonics(freq, n, weights) * _env(n, 0.002, min(0.35, dur_s))
    if timbre == "pad":
        detune = 1 + rng.uniform(0.002, 0.006)
        wave = _harmonics(freq, n, [1, 0.4, 0.2]) + _harmonics(freq * detune, n, [1, 0.4, 0.2])
        return wave * np.minimum(1.0, np.arange(n) / (0.4 * n + 1)) * 0.5
    if timbre == "string":
        wave = _harmonics(freq, n, [1 / k for k in range(1, 10)], vibrato=0.02 * freq / 5.5)
        return wave * np.minimum(1.0, np.arange(n) / (0.2 * n + 1)) * _env(n, 0.0, dur_s * 2)
    if timbre in ("808", "walk"):
        t = np.arange(n) / SAMPLE_RATE
        glide = freq * (1 + (0.5 if timbre == "808" else 0.0) * np.exp(-t / 0.03))
        wave = np.sin(2 * np.pi * np.cumsum(glide) / SAMPLE_RATE)
        return wave * _env(n, 0.002, dur_s * (1.2 if timbre == "808" else 0.5))
    raise ValueError(f"unknown timbre {timbre!r}")


def drum(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "kick":
        n = int(0.3 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        freq = 45 + 90 * np.exp(-t / 0.04)
        return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * np.exp(-t / 0.12)
    if kind == "snare":
        n = int(0.2 * SAMPLE_RATE)
        noise = np.diff(rng.standard_normal(n + 1)) * 0.5
        return (noise + 0.5 * _harmonics(185, n, [1.0])) * _env(n, 0.001, 0.06)
    if kind == "hat":
        n = int(0.06 * SAMPLE_RATE)
        return np.diff(rng.standard_normal(n + 1), 2, prepend=0) * 0.25 * _env(n, 0.0005, 0.015)
    if kind == "ride":
        n = int(0.5 * SAMPLE_RATE)
        partials = np.zeros(n)
        for f in (2950.0, 4210.0, 5130.0, 6660.0):
            partials += np.sin(2 * np.pi * f * np.arange(n) / SAMPLE_RATE + rng.uniform(0, 6))
        return 0.12 * partials * _env(n, 0.001, 0.25)
    raise ValueError(kind)


PATTERNS: dict[str, list[tuple[float, str]]] = {  # (beat position within a 4-beat bar, drum)
    "none": [],
    "four": [
        (0, "kick"),
        (1, "kick"),
        (2, "kick"),
        (3, "kick"),
        (0.5, "hat"),
        (1.5, "hat"),
        (2.5, "hat"),
        (3.5, "hat"),
        (1, "snare"),
        (3, "snare"),
    ],
    "rock": [(0, "kick"), (2, "kick"), (2.5, "kick"), (1, "snare"), (3, "snare")]
    + [(i / 2, "hat") for i in range(8)],
    "boombap": [
        (0, "kick"),
        (0.75, "kick"),
        (2.5, "kick"),
        (1, "snare"),
        (3, "snare"),
        (0, "hat"),
        (1, "hat"),
        (2, "hat"),
        (3, "hat"),
    ],
    "swing": [
        (0, "ride"),
        (1, "ride"),
        (1.67, "ride"),
        (2, "ride"),
        (3, "ride"),
        (3.67, "ride"),
        (1, "hat"),
        (3, "hat"),
    ],
}


DRUM_GAIN = {"kick": 0.9, "snare": 0.6, "hat": 0.5, "ride": 0.6}

# --- a track ---------------------------------------------------------------------------

MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]


def _midi(m: float) -> float:
    return float(440.0 * 2 ** ((m - 69) / 12))


def _add(buf: np.ndarray, start_s: float, sound: np.ndarray, gain: float) -> None:
    i = max(0, int(start_s * SAMPLE_RATE))
    if i >= buf.shape[0]:
        return
    j = min(buf.shape[0], i + sound.shape[0])
    buf[i:j] += gain * sound[: j - i]


def synth_track(genre: str, seed: int, *, duration_s: float = 30.0) -> tuple[np.ndarray, float]:
    """Render one track. Returns ``(samples [n] float32 in [-1, 1], valence in [0, 1])``."""
    style = STYLES[genre]
    rng = np.random.default_rng(seed)
    n = int(duration_s * SAMPLE_RATE)
    buf = np.zeros(n)
    bpm = rng.uniform(*style.tempo)
    beat = 60.0 / bpm
    major = rng.random() < style.major_prob
    scale = MAJOR if major else MINOR
    root = 45 + int(rng.integers(0, 12))  # A2..G#3
    progression = rng.choice(7, size=4, replace=True)
    progression[0] = 0
    bar = 4 * beat
    n_bars = int(np.ceil(duration_s / bar))
    swing = style.swing * rng.uniform(0.7, 1.0)

    def deg(d: int, octave: int = 0) -> float:
        return root + 12 * (octave + d // 7) + scale[d % 7]

    kit = {kind: drum(kind, rng) for kind in DRUM_GAIN}  # one kit per track
    for b in range(n_bars):
        t0 = b * bar
        chord_root = int(progression[b % 4])
        degrees = [chord_root, chord_root + 2, chord_root + 4] + (
            [chord_root + 6] if style.sevenths else []
        )
        for d in degrees:  # chords: held for the bar
            _add(buf, t0, note(style.chords, _midi(deg(d, 1)), bar, rng), 0.12)
        bass_steps = 4 if style.bass == "walk" else 2
        for k in range(bass_steps):  # bass
            d = chord_root + (int(rng.integers(0, 5)) if style.bass == "walk" else 0)
            _add(
                buf,
                t0 + k * bar / bass_steps,
                note(style.bass, _midi(deg(d)), bar / bass_steps, rng),
                0.35,
            )
        for k in range(8):  # lead: a sparse melody on eighth notes, swung off-beats
            if rng.random() < (0.35 if style.lead in ("pad", "string") else 0.55):
                off = (k % 2) * swing * beat * 0.5
                d = chord_root + int(rng.choice([0, 2, 4, 5, 7]))
                length = beat * (2 if style.lead in ("pad", "string") else 0.5)
                _add(
                    buf,
                    t0 + k * beat / 2 + off,
                    note(style.lead, _midi(deg(d, 2)), length, rng),
                    0.18,
                )
        for pos, kind in PATTERNS[style.drums]:  # drums, with swing and a little human timing
            off = swing * beat * 0.5 if abs(pos % 1 - 0.5) < 1e-6 else 0.0
            jitter = rng.normal(0, 0.004)
            gain = DRUM_GAIN[kind] * rng.uniform(0.8, 1.0)
            _add(buf, t0 + pos * beat + off + jitter, kit[kind], gain)
    if genre == "classical":  # dynamics: slow swells
        buf *= (
            0.55 + 0.45 * np.sin(2 * np.pi * np.arange(n) / SAMPLE_RATE / rng.uniform(8, 14)) ** 2
        )
    if genre == "ambient":
        buf += 0.02 * np.convolve(rng.standard_normal(n), np.ones(64) / 64, mode="same")
    if style.drive:
        buf = np.tanh(style.drive * buf) / np.tanh(style.drive)
    buf += rng.normal(0, 0.002, n)  # a noise floor: no file is digitally perfect
    peak = float(np.max(np.abs(buf))) or 1.0
    samples = (buf / peak * rng.uniform(*style.loudness)).astype(np.float32)
    tempo01 = (bpm - 60) / 110
    valence = float(
        np.clip(0.18 + (0.42 if major else 0.0) + 0.25 * tempo01 + rng.normal(0, 0.07), 0, 1)
    )
    return samples, valence


def lyrics_for(genre: str, valence: float, rng: np.random.Generator) -> str | None:
    style = STYLES[genre]
    if rng.random() >= style.lyrics_prob:
        return None
    mood = "sad" if valence < 0.3 else ("neutral" if valence < 0.6 else "happy")
    lines = []
    for _ in range(int(rng.integers(4, 9))):
        words = [
            str(rng.choice(style.words))
            if rng.random() < 0.5
            else str(rng.choice(MOOD_WORDS[mood]))
            for _ in range(int(rng.integers(4, 8)))
        ]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines)


# --- the catalog -----------------------------------------------------------------------


def _render(job: tuple[str, str, int, float, str]) -> float:
    genre, path, seed, duration_s, fmt = job
    samples, valence = synth_track(genre, seed, duration_s=duration_s)
    if fmt == "mp3":
        sf.write(path, samples, SAMPLE_RATE, format="MP3")
    else:
        sf.write(path, samples, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return valence


STAMP_FILE = ".demo-catalog"  # the parameters of a finished catalog, written last


def catalog_key(
    genres: list[str], tracks_per_genre: int, artists_per_genre: int, duration_s: float, seed: int
) -> str:
    """The parameters a demo catalog was made with, as its stamp file holds them."""
    return f"{genres}|{tracks_per_genre}|{artists_per_genre}|{duration_s}|{seed}"


def make_demo_catalog(
    out_dir: str | Path,
    *,
    tracks_per_genre: int = 30,
    artists_per_genre: int = 6,
    duration_s: float = 30.0,
    seed: int = 0,
    genres: list[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite_other: bool = True,
) -> Path:
    """Write the demo catalog (audio files and ``manifest.csv``) into ``out_dir``.

    Reuses a complete catalog already there (same parameters). Files alternate MP3
    and OGG. Returns the manifest path.

    Raises:
        ConfigError: ``overwrite_other`` is false and ``out_dir`` holds a finished catalog
            made with other parameters (it would be overwritten).
    """
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    names = genres or sorted(STYLES)
    key = catalog_key(names, tracks_per_genre, artists_per_genre, duration_s, seed)
    stamp = out / STAMP_FILE
    if manifest.is_file() and stamp.is_file():
        if stamp.read_text() == key:
            return manifest
        if not overwrite_other:
            raise ConfigError(
                f"{out} holds a demo catalog made with other settings ({stamp.read_text()}; "
                f"asked: {key}); remove its folder or choose a new --out"
            )
    jobs, rows = [], []
    for g_index, genre in enumerate(names):
        (out / genre).mkdir(parents=True, exist_ok=True)
        for i in range(tracks_per_genre):
            track_seed = seed * 1_000_003 + g_index * 10_007 + i
            fmt = "mp3" if i % 2 == 0 else "ogg"
            rel = f"{genre}/{genre}-{i:03d}.{fmt}"
            jobs.append((genre, str(out / rel), track_seed, duration_s, fmt))
            rows.append(
                {
                    "track_id": f"{genre}-{i:03d}",
                    "uri": rel,
                    "genre": genre,
                    "artist_id": f"{genre}-artist-{i % artists_per_genre}",
                    "seed": track_seed,
                }
            )
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    valences = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, valence in enumerate(pool.map(_render, jobs, chunksize=4), start=1):
            valences.append(valence)
            if progress:
                progress(done, len(jobs))
    table = pd.DataFrame(rows)
    table["valence"] = np.round(valences, 3)
    table["lyrics"] = [
        lyrics_for(g, v, np.random.default_rng(s + 7))
        for g, v, s in zip(table["genre"], table["valence"], table["seed"], strict=True)
    ]
    table.drop(columns=["seed"]).to_csv(manifest, index=False)
    stamp.write_text(key)
    return manifest
