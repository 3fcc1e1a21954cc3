"""Decoding: the only module that opens audio files.

soundfile (libsndfile with mpg123/vorbis/flac) decodes MP3, OGG, FLAC and WAV in
process, reading only the frames a clip needs, so a 20-minute file costs what 30 s
cost. Anything libsndfile cannot open falls back to ``librosa.load`` (audioread) for
local files. Every failure is an :class:`AudioError` with a stable ``kind``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
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
    offset_s: float = 0.0  # where the clip starts in the track
    track_s: float = 0.0  # the track's length as its header declares it


# Where a window starts, given the track's length in seconds (e.g. TokenSpec.clip_offset_s).
Placement = Callable[[float], float]


@dataclass(frozen=True)
class Window:
    """Decoded audio of one window of a track."""

    samples: np.ndarray  # [channels, n] float32
    sample_rate: int
    offset_s: float  # where the window starts in the track
    track_s: float  # the track's length as its header declares it


def load_audio(
    uri: str, *, max_duration_s: float | None = None, offset: float | Placement = 0.0
) -> tuple[np.ndarray, int]:
    """Decode one window of an audio file (by default its start).

    Args:
        uri: local path, ``file://`` or any pyarrow filesystem URI (``s3://...``).
        max_duration_s: decode at most this much; ``None`` for all.
        offset: seconds into the track where decoding starts, or a function of the
            track's length giving them; the decoder seeks there, nothing before it is
            decoded.

    Returns:
        ``(samples [channels, n_samples] float32, sample_rate)``.

    Raises:
        AudioError: ``missing``, ``empty``, ``undecodable`` or ``truncated``.
    """
    window = load_window(uri, length_s=max_duration_s, offset=offset)
    return window.samples, window.sample_rate


def load_window(
    uri: str,
    *,
    length_s: float | None,
    offset: float | Placement = 0.0,
    source: AudioSource | None = None,
) -> Window:
    """:func:`load_audio` with where the window lies in the track.

    Raises:
        AudioError: ``missing``, ``empty``, ``undecodable`` or ``truncated``.
    """
    place = offset if callable(offset) else (lambda _track_s, at=float(offset): at)
    (window,) = load_windows(
        uri, length_s=length_s, starts=lambda track_s: [place(track_s)], source=source
    )
    return window


def load_windows(
    uri: str,
    *,
    length_s: float | None,
    starts: Callable[[float], Sequence[float]],
    source: AudioSource | None = None,
) -> list[Window]:
    """Decode several windows of one file, opened once, seeking to each: the windows'
    bytes are read, never the rest of the file (on a local file or one in object
    storage alike). ``starts`` maps the track's length (from its header) to the start of
    every window, in seconds. ``source``: the file already opened (:func:`open_source`).

    Raises:
        AudioError: ``missing``, ``empty``, ``undecodable`` or ``truncated``.
    """
    if source is None:
        with open_source(uri) as opened:
            return load_windows(uri, length_s=length_s, starts=starts, source=opened)
    try:
        try:
            return _read_soundfile(source.reader, uri, length_s, starts)
        except sf.LibsndfileError as exc:
            if source.local:
                return _read_librosa(source.reader, uri, length_s, starts, reason=str(exc))
            raise AudioError("undecodable", f"not a readable audio file: {uri!r} ({exc})") from exc
    except AudioError as exc:
        if exc.kind != "undecodable":
            raise
        cause = _mp3_fault(source.reader, uri)
        if cause is None:
            raise
        raise AudioError(*cause) from exc


def _mp3_fault(source: Any, uri: str) -> tuple[str, str] | None:
    """What is wrong with a file no decoder reads, where its bytes say: an ID3 tag and
    no audio after it (``no_audio``; fma_small's 099134, 108925, 133297), or a tag
    followed by bytes that hold no MP3 frame. None when the bytes say nothing."""
    with ExitStack() as stack:
        handle = source
        if isinstance(source, str):
            handle = stack.enter_context(open(source, "rb"))
        handle.seek(0)
        head = bytes(handle.read(MP3_SYNC_SEARCH))
        size = int(handle.seek(0, io.SEEK_END))
    if not head.startswith(b"ID3") or len(head) < 10:
        return None
    tag_end = _id3_end(head)
    if size - tag_end < 128:
        return "no_audio", (
            f"{uri!r} holds an ID3 tag and no audio ({size} bytes in all, {max(0, size - tag_end)} "
            "after the tag)"
        )
    if tag_end < len(head) and mp3_frame_at(head[tag_end:]) is None:
        return "undecodable", (
            f"{uri!r}: after its ID3 tag, {size - tag_end} bytes that hold no MP3 frame (the "
            "file is corrupt even where its checksum matches)"
        )
    return None


WHOLE_OBJECT_BYTES = 16 * 2**20  # an object up to this size is fetched in one request
REMOTE_BLOCK_BYTES = 2 * 2**20  # a larger one is read in ranged requests of this size
REMOTE_BLOCKS_KEPT = 4


@dataclass(frozen=True)
class AudioSource:
    """One track's file, opened once for everything read of it (decoding, the digest).

    ``reader`` is what soundfile opens: a local path, or for an object in object storage
    a seekable file object whose reads cost a few requests a track (the whole object in
    one request up to :data:`WHOLE_OBJECT_BYTES`, else blocks of
    :data:`REMOTE_BLOCK_BYTES`) instead of one request per decoder read.
    """

    uri: str
    reader: Any
    size: int

    @property
    def local(self) -> bool:
        return isinstance(self.reader, str)

    def read_at(self, n: int, offset: int) -> bytes:
        """``n`` bytes at ``offset`` (fewer at the end)."""
        if isinstance(self.reader, str):
            with open(self.reader, "rb") as f:
                f.seek(offset)
                return f.read(n)
        self.reader.seek(offset)
        return bytes(self.reader.read(n))


@contextmanager
def open_source(uri: str) -> Iterator[AudioSource]:
    """Open one track's file for :func:`load_windows` and friends.

    Raises:
        AudioError: ``missing`` or ``empty``.
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
    if not storage.is_remote(uri):
        yield AudioSource(uri, path, int(info.size))
        return
    try:
        if info.size <= WHOLE_OBJECT_BYTES:
            with fs.open_input_file(path) as handle:  # one ranged GET of it all
                reader: Any = io.BytesIO(bytes(handle.read_at(int(info.size), 0)))
            yield AudioSource(uri, reader, int(info.size))
            return
        with fs.open_input_file(path) as handle:
            blocks = _BlockCache(handle, int(info.size))
            yield AudioSource(uri, _RangeView(blocks.read_at, 0, int(info.size)), int(info.size))
    except OSError as exc:
        raise AudioError("missing", f"cannot read {uri!r}: {exc}") from exc


class _BlockCache:
    """Ranged reads of a large remote object in aligned blocks of
    :data:`REMOTE_BLOCK_BYTES`, one request each, keeping the last few."""

    def __init__(self, handle: Any, size: int) -> None:
        self.handle, self.size = handle, size
        self.blocks: dict[int, bytes] = {}

    def _block(self, index: int) -> bytes:
        if index not in self.blocks:
            if len(self.blocks) >= REMOTE_BLOCKS_KEPT:
                self.blocks.pop(next(iter(self.blocks)))
            start = index * REMOTE_BLOCK_BYTES
            n = min(REMOTE_BLOCK_BYTES, self.size - start)
            self.blocks[index] = bytes(self.handle.read_at(n, start))
        return self.blocks[index]

    def read_at(self, n: int, offset: int) -> bytes:
        parts = []
        while n > 0 and offset < self.size:
            index, within = divmod(offset, REMOTE_BLOCK_BYTES)
            chunk = self._block(index)[within : within + n]
            parts.append(chunk)
            n -= len(chunk)
            offset += len(chunk)
        return b"".join(parts)


def _seek_and_read(handle: Any) -> Callable[[int, int], bytes]:
    def read_at(n: int, offset: int) -> bytes:
        handle.seek(offset)
        return bytes(handle.read(n))

    return read_at


class _RangeView(io.RawIOBase):
    """A readable, seekable file object over bytes ``[start, end)`` of a source read by
    ``read_at(n, offset)``: what soundfile opens for an object in storage, or for an MP3
    from one of its frames."""

    def __init__(self, read_at: Callable[[int, int], bytes], start: int, end: int) -> None:
        self.read_at, self.start, self.size, self.pos = read_at, start, end - start, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = min(max(0, base + offset), self.size)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read_at(min(len(view), self.size - self.pos), self.start + self.pos)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _read_soundfile(
    source: Any, uri: str, length_s: float | None, starts: Callable[[float], Sequence[float]]
) -> list[Window]:
    windows = []
    with sf.SoundFile(source) as f:
        sample_rate = int(f.samplerate)
        declared = int(f.frames)
        track_s = declared / sample_rate
        mp3 = f.format == "MP3"
        for start_s in starts(track_s):
            first = min(max(0, round(start_s * sample_rate)), declared)
            wanted = declared - first
            if length_s is not None:
                wanted = min(wanted, math.ceil(length_s * sample_rate))
            tolerance = TRUNCATION_TOLERANCE
            if first and mp3:
                data = _read_mp3_at(source, uri, first / declared, wanted)
                tolerance = MP3_SEEK_TOLERANCE  # a byte position is a time to a few %
            else:
                if first:
                    f.seek(first)
                data = f.read(frames=wanted, dtype="float32", always_2d=True)  # [n, channels]
            if data.shape[0] == 0:
                raise AudioError("undecodable", f"no audio frames could be decoded from {uri!r}")
            if data.shape[0] < tolerance * wanted:
                raise AudioError(
                    "truncated",
                    f"{uri!r} is cut short: its header declares {track_s:.2f} s "
                    f"but only {(first + data.shape[0]) / sample_rate:.2f} s decode",
                )
            windows.append(
                Window(np.ascontiguousarray(data.T), sample_rate, first / sample_rate, track_s)
            )
    return windows


# --- MP3: seek by bytes ------------------------------------------------------------------
# libsndfile's MP3 decoder seeks exactly by reading every frame before the target: half
# the file for a clip from the middle. A window of an MP3 is read instead from the frame
# that starts nearest its share of the file's bytes (exact for constant bitrate, FMA's
# usual case; within a few percent for VBR), so a 20-minute track costs what 30 s cost.

_MP3_BITRATES = {  # kbit/s by (MPEG-1?, layer) and the header's 4-bit index
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
MP3_SYNC_SEARCH = 64 * 1024  # bytes searched for a frame header from the estimated offset
MP3_SEEK_TOLERANCE = 0.5  # a window read by byte position may end this early (at the end)


def _mp3_frame_length(header: bytes) -> int:
    """Bytes of the Layer III frame starting with ``header`` (4 bytes); 0 if it is none."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return 0
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return 0
    mpeg1 = version == 3
    bitrate = _MP3_BITRATES[(mpeg1, 3)][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    return (144 if mpeg1 else 72) * bitrate // rate + padding


def mp3_frame_at(data: bytes, *, frames: int = 3) -> int | None:
    """The first position in ``data`` where ``frames`` consecutive Layer III frame
    headers chain (each where the last one's length says), or None."""
    at = data.find(b"\xff")
    while 0 <= at < len(data) - 4:
        pos, ok = at, True
        for _ in range(frames):
            length = _mp3_frame_length(data[pos : pos + 4])
            if not length:
                ok = False
                break
            pos += length
        if ok and pos <= len(data):
            return at
        at = data.find(b"\xff", at + 1)
    return None


def _id3_end(head: bytes) -> int:
    """Where the audio starts after an ID3v2 tag (0 without one); ``head``: its first 10 bytes."""
    if len(head) < 10 or not head.startswith(b"ID3"):
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
    return 10 + size


def _read_mp3_at(source: Any, uri: str, share: float, frames: int) -> np.ndarray:
    """``frames`` samples of an MP3 from the frame at ``share`` (0-1) of its bytes."""
    with ExitStack() as stack:
        handle = source
        if isinstance(source, str):
            handle = stack.enter_context(open(source, "rb"))
        else:  # the caller's decoder reads the same object: give its position back
            stack.callback(handle.seek, handle.tell())
        size = int(handle.seek(0, io.SEEK_END))
        handle.seek(0)
        audio_from = _id3_end(bytes(handle.read(10)))
        estimate = audio_from + int(share * (size - audio_from))
        handle.seek(estimate)
        found = mp3_frame_at(bytes(handle.read(MP3_SYNC_SEARCH)))
        if found is None:
            raise AudioError("undecodable", f"{uri!r}: no MP3 frame near byte {estimate} of {size}")
        with sf.SoundFile(_RangeView(_seek_and_read(handle), estimate + found, size)) as f:
            return f.read(frames=frames, dtype="float32", always_2d=True)


def _read_librosa(
    path: str,
    uri: str,
    length_s: float | None,
    starts: Callable[[float], Sequence[float]],
    *,
    reason: str,
) -> list[Window]:
    """The fallback decoder (audioread) for local files libsndfile cannot open."""
    import librosa

    windows = []
    try:
        with warnings.catch_warnings():  # librosa warns before and while falling back
            warnings.simplefilter("ignore")
            track_s = float(librosa.get_duration(path=path))
            for start_s in starts(track_s):
                samples, sample_rate = librosa.load(
                    path, sr=None, mono=False, offset=max(0.0, start_s), duration=length_s
                )
                samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
                if samples.shape[1] == 0:
                    raise AudioError(
                        "undecodable", f"no audio frames could be decoded from {uri!r}"
                    )
                windows.append(Window(samples, int(sample_rate), max(0.0, start_s), track_s))
    except AudioError:
        raise
    except Exception as exc:  # audioread raises a zoo of types; all mean "cannot decode"
        raise AudioError(
            "undecodable",
            f"not a readable audio file: {os.path.basename(path)!r} ({reason}; "
            f"fallback decoder: {type(exc).__name__})",
        ) from exc
    return windows


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
    offset: float | Placement = 0.0,
    declared_s: float | None = None,
    source: AudioSource | None = None,
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
        offset: where the clip starts (see :func:`load_audio`).
        declared_s: the track's length as the catalog states it; a file far shorter is
            named as such in a ``too_short`` error (FMA: a clip cut past the track's end).

    Raises:
        AudioError: any decode failure, ``too_short`` or ``silent``.
    """
    window = load_window(uri, length_s=clip_s, offset=offset, source=source)
    raw, source_sr = window.samples, window.sample_rate
    mono = resample(to_mono(raw), orig_sr=source_sr, target_sr=sample_rate)
    if not np.all(np.isfinite(mono)):
        raise AudioError("undecodable", f"{uri!r} decodes to NaN or infinite samples")
    duration_s = min(mono.shape[0] / sample_rate, clip_s)
    if duration_s < min_duration_s:
        stated = ""
        if declared_s is not None and np.isfinite(declared_s) and declared_s > 2 * window.track_s:
            stated = (
                f" although the catalog says the track lasts {declared_s:g} s (the clip was "
                "cut past the track's real end, or its duration metadata is wrong)"
            )
        raise AudioError(
            "too_short",
            f"{uri!r} holds {duration_s:.2f} s of audio, less than min_duration_s="
            f"{min_duration_s:g}{stated}; lower min_duration_s to pad such clips instead",
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
        offset_s=window.offset_s,
        track_s=window.track_s,
    )
