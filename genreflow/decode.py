"""Audio -> tokens: the one decode path. Ingest, labelling and ``recommend --audio``
all decode through :func:`decode_tokens`, with one error policy: a track that cannot
be used becomes an error row naming it (its :class:`~genreflow.errors.AudioError` kind,
or ``internal`` for any other exception, logged with its traceback); no track ever
takes its batch down."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genreflow.audio import load_clip
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
    clip = load_clip(
        uri,
        sample_rate=spec.sample_rate,
        clip_s=spec.clip_s,
        min_duration_s=min_duration_s,
        allow_silent=allow_silent,
    )
    mel = log_mel_for_spec(clip.samples, spec)  # [n_mels, n_frames]
    return cut_tokens(mel, spec).astype(np.float16), clip.duration_s


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


def decode_tokens(
    track_ids: Sequence[str],
    uris: Sequence[str],
    spec: TokenSpec,
    *,
    min_duration_s: float = 0.0,
    allow_silent: bool = False,
) -> Decoded:
    """Decode and tokenize every ``(track_id, uri)``; never raises for a track."""
    index: list[int] = []
    tokens: list[np.ndarray] = []
    durations: list[float] = []
    errors: list[dict[str, str]] = []
    failed: dict[int, str] = {}
    seconds: list[float] = []
    for i, (track_id, uri) in enumerate(zip(track_ids, uris, strict=True)):
        start = time.perf_counter()
        try:
            toks, duration = tokenize_track(
                uri, spec, min_duration_s=min_duration_s, allow_silent=allow_silent
            )
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
        seconds.append(time.perf_counter() - start)
    return Decoded(
        index=index,
        tokens=np.stack(tokens) if tokens else np.zeros((0, *spec.token_shape), np.float16),
        durations=np.asarray(durations, dtype=np.float32),
        errors=errors,
        failed=failed,
        seconds=seconds,
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
