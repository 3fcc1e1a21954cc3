"""Audio -> tokens: the one decode path. Ingest, labelling and ``recommend --audio``
all decode through :func:`decode_tokens`, with one error policy: a track that cannot
be used becomes an error row naming it (its :class:`~genreflow.errors.AudioError` kind,
or ``internal`` for any other exception, logged with its traceback); no track ever
takes its batch down."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from genreflow.audio import (
    SILENCE_PEAK,
    AudioSource,
    Clip,
    fix_length,
    load_clip,
    load_windows,
    open_source,
    resample,
    to_mono,
)
from genreflow.errors import AudioError
from genreflow.features import log_mel_for_spec
from genreflow.formats.dataset import ERRORS_SCHEMA
from genreflow.tokens import TokenSpec, cut_tokens

log = logging.getLogger(__name__)


def tokenize_track(
    uri: str, spec: TokenSpec, *, min_duration_s: float = 0.0, allow_silent: bool = False
) -> tuple[np.ndarray, float]:
    """Decode one file into tokens.

    Returns:
        ``(tokens [n_tokens, n_mels, token_frames] float16, duration_s)``.

    Raises:
        AudioError: the file cannot be used (see :func:`genreflow.audio.load_clip`).
    """
    clip = _clip(uri, spec, min_duration_s=min_duration_s, allow_silent=allow_silent)
    return _tokens(clip, spec), clip.duration_s


def _clip(
    uri: str,
    spec: TokenSpec,
    *,
    min_duration_s: float,
    allow_silent: bool,
    declared_s: float | None = None,
    source: AudioSource | None = None,
) -> Clip:
    """The clip the spec asks for: one window (``clip_from``), or with ``token_layout``
    track, the tokens' windows spread over the whole track, decoded one by one."""
    if spec.token_layout == "track":
        return _spread_clip(
            uri, spec, min_duration_s=min_duration_s, allow_silent=allow_silent, source=source
        )
    return load_clip(
        uri,
        sample_rate=spec.sample_rate,
        clip_s=spec.clip_s,
        min_duration_s=min_duration_s,
        allow_silent=allow_silent,
        offset=spec.clip_offset_s,
        declared_s=declared_s,
        source=source,
    )


def _spread_clip(
    uri: str,
    spec: TokenSpec,
    *,
    min_duration_s: float,
    allow_silent: bool,
    source: AudioSource | None = None,
) -> Clip:
    """``token_layout`` track: ``samples`` is ``[n_tokens, token_samples]``, one window
    per token at :meth:`TokenSpec.track_token_starts_s`; ``duration_s`` the track's."""
    token_samples = spec.token_frames * spec.hop_length
    windows = load_windows(
        uri, length_s=spec.token_s, starts=spec.track_token_starts_s, source=source
    )
    track_s = windows[0].track_s
    if track_s < min_duration_s:
        raise AudioError(
            "too_short",
            f"{uri!r} holds {track_s:.2f} s of audio, less than min_duration_s={min_duration_s:g}",
        )
    rows = [
        fix_length(
            resample(to_mono(w.samples), orig_sr=w.sample_rate, target_sr=spec.sample_rate),
            token_samples,
        )
        for w in windows
    ]
    samples = np.stack(rows)
    if not np.all(np.isfinite(samples)):
        raise AudioError("undecodable", f"{uri!r} decodes to NaN or infinite samples")
    if not allow_silent and float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioError(
            "silent", f"{uri!r} is silent (peak below -80 dBFS); set allow_silent=true to keep it"
        )
    return Clip(
        samples=samples,
        duration_s=float(track_s),
        source_sample_rate=windows[0].sample_rate,
        source_channels=int(windows[0].samples.shape[0]),
        offset_s=0.0,
        track_s=float(track_s),
    )


def _tokens(clip: Clip, spec: TokenSpec) -> np.ndarray:
    """``[n_tokens, n_mels, token_frames]`` float16 of a clip (either layout)."""
    if spec.token_layout == "track":
        tokens = np.empty(spec.token_shape, dtype=np.float16)
        for i, window in enumerate(clip.samples):  # [token_samples] each
            tokens[i] = log_mel_for_spec(window, spec)[:, : spec.token_frames]
        return tokens
    mel = log_mel_for_spec(clip.samples, spec)  # [n_mels, n_frames]
    return cut_tokens(mel, spec).astype(np.float16)


DIGEST_CHARS = 32  # hex digits kept of a SHA-256: 128 bits
DIGEST_SAMPLE_BYTES = 64 * 1024  # bytes read at each of a file's start, middle and end


def file_digest(
    uri: str, *, sample_bytes: int = DIGEST_SAMPLE_BYTES, source: AudioSource | None = None
) -> str:
    """A content digest of a file whose cost does not grow with the file: SHA-256 of its
    size and of ``sample_bytes`` at its start, middle and end (the whole file when it is
    smaller than those three). The same file under two names has the same digest;
    two different encodings of audio essentially never share size and all three
    samples. ``source``: the file already opened for decoding (its bytes are reused).
    (:data:`DIGEST_CHARS` hex digits.)"""
    if source is None:
        with open_source(uri) as opened:
            return file_digest(uri, sample_bytes=sample_bytes, source=opened)
    size = source.size
    digest = hashlib.sha256()
    digest.update(size.to_bytes(8, "little"))
    if size <= 3 * sample_bytes:
        digest.update(source.read_at(size, 0))
    else:
        for at in (0, (size - sample_bytes) // 2, size - sample_bytes):
            digest.update(source.read_at(sample_bytes, at))
    return digest.hexdigest()[:DIGEST_CHARS]


def clip_digest(samples: np.ndarray) -> str:
    """SHA-256 of a decoded clip as 16-bit samples: the same audio in another container,
    with other tags or at another source rate resampled alike, has the same digest."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    return hashlib.sha256(pcm.tobytes()).hexdigest()[:DIGEST_CHARS]


def error_row(track_id: str, uri: str, stage: str, kind: str, error: str) -> dict[str, str]:
    """One row of an ``errors/`` file (:data:`genreflow.schema.ERRORS_SCHEMA`)."""
    return {"track_id": track_id, "uri": uri, "stage": stage, "kind": kind, "error": error}


def error_table(rows: list[dict[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)


@dataclass
class Decoded:
    """A batch of tracks after decoding: the rows that decoded and the error rows."""

    index: list[int]  # positions, in the input, of the rows that decoded
    tokens: np.ndarray  # [len(index), n_tokens, n_mels, token_frames] float16
    durations: np.ndarray  # [len(index)] float32 seconds of audio before padding
    errors: list[dict[str, str]]  # one error row per track that failed, in input order
    failed: dict[int, str]  # input position -> error kind
    seconds: list[float]  # per input row: the time its decode took
    file_digests: list[str]  # per decoded row (with ``digests``): :func:`file_digest`
    clip_digests: list[str]  # per decoded row (with ``digests``): :func:`clip_digest`
    offsets: list[float] = field(default_factory=list)  # per decoded row: clip start (s)


def decode_tokens(
    track_ids: Sequence[str],
    uris: Sequence[str],
    spec: TokenSpec,
    *,
    min_duration_s: float = 0.0,
    allow_silent: bool = False,
    digests: bool = False,
    declared_s: Sequence[float | None] | None = None,
) -> Decoded:
    """Decode and tokenize every ``(track_id, uri)``; never raises for a track. With
    ``digests``, each decoded track's file and clip digests too (ingest finds duplicate
    audio by them). ``declared_s``: each track's length as the catalog states it, named
    in the error of a file far shorter."""
    index: list[int] = []
    tokens: list[np.ndarray] = []
    durations: list[float] = []
    errors: list[dict[str, str]] = []
    failed: dict[int, str] = {}
    seconds: list[float] = []
    file_digests: list[str] = []
    clip_digests: list[str] = []
    offsets: list[float] = []
    for i, (track_id, uri) in enumerate(zip(track_ids, uris, strict=True)):
        start = time.perf_counter()
        try:
            with open_source(uri) as source:  # one open (a few requests) for all of it
                clip = _clip(
                    uri,
                    spec,
                    min_duration_s=min_duration_s,
                    allow_silent=allow_silent,
                    declared_s=None if declared_s is None else declared_s[i],
                    source=source,
                )
                toks, duration = _tokens(clip, spec), clip.duration_s
                if digests:
                    found = (file_digest(uri, source=source), clip_digest(clip.samples))
        except AudioError as exc:
            errors.append(error_row(track_id, uri, "decode", exc.kind, str(exc)))
            failed[i] = exc.kind
        except Exception as exc:  # a bug or a library's surprise: one track, not the batch
            log.exception("unexpected failure decoding track %s (%s)", track_id, uri)
            message = f"{type(exc).__name__}: {exc}"
            errors.append(error_row(track_id, uri, "decode", "internal", message))
            failed[i] = "internal"
        else:
            index.append(i)
            tokens.append(toks)
            durations.append(duration)
            offsets.append(clip.offset_s)
            if digests:
                file_digests.append(found[0])
                clip_digests.append(found[1])
        seconds.append(time.perf_counter() - start)
    return Decoded(
        index=index,
        tokens=np.stack(tokens) if tokens else np.zeros((0, *spec.token_shape), np.float16),
        durations=np.asarray(durations, dtype=np.float32),
        errors=errors,
        failed=failed,
        seconds=seconds,
        file_digests=file_digests,
        clip_digests=clip_digests,
        offsets=offsets,
    )


def decode_one(uri: str, spec: TokenSpec) -> tuple[np.ndarray, float]:
    """One file's ``(tokens, duration_s)`` through :func:`decode_tokens`.

    Raises:
        AudioError: the file cannot be used, with the message its error row would carry.
    """
    decoded = decode_tokens([uri], [uri], spec)
    if decoded.errors:
        raise AudioError(decoded.failed[0], decoded.errors[0]["error"])
    return decoded.tokens[0], float(decoded.durations[0])
