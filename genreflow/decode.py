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
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genreflow import storage
from genreflow.audio import Clip, load_clip
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
    return _tokens(clip.samples, spec), clip.duration_s


def _clip(uri: str, spec: TokenSpec, *, min_duration_s: float, allow_silent: bool) -> Clip:
    return load_clip(
        uri,
        sample_rate=spec.sample_rate,
        clip_s=spec.clip_s,
        min_duration_s=min_duration_s,
        allow_silent=allow_silent,
    )


def _tokens(samples: np.ndarray, spec: TokenSpec) -> np.ndarray:
    mel = log_mel_for_spec(samples, spec)  # [n_mels, n_frames]
    return cut_tokens(mel, spec).astype(np.float16)


DIGEST_CHARS = 32  # hex digits kept of a SHA-256: 128 bits


def file_digest(uri: str, *, chunk: int = 2**20) -> str:
    """SHA-256 of a file's bytes (:data:`DIGEST_CHARS` hex digits), read in chunks."""
    fs, path = storage.resolve(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while block := stream.read(chunk):
            digest.update(block)
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


def decode_tokens(
    track_ids: Sequence[str],
    uris: Sequence[str],
    spec: TokenSpec,
    *,
    min_duration_s: float = 0.0,
    allow_silent: bool = False,
    digests: bool = False,
) -> Decoded:
    """Decode and tokenize every ``(track_id, uri)``; never raises for a track. With
    ``digests``, each decoded track's file and clip digests too (ingest finds duplicate
    audio by them)."""
    index: list[int] = []
    tokens: list[np.ndarray] = []
    durations: list[float] = []
    errors: list[dict[str, str]] = []
    failed: dict[int, str] = {}
    seconds: list[float] = []
    file_digests: list[str] = []
    clip_digests: list[str] = []
    for i, (track_id, uri) in enumerate(zip(track_ids, uris, strict=True)):
        start = time.perf_counter()
        try:
            clip = _clip(uri, spec, min_duration_s=min_duration_s, allow_silent=allow_silent)
            toks, duration = _tokens(clip.samples, spec), clip.duration_s
            if digests:
                found = (file_digest(uri), clip_digest(clip.samples))
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
