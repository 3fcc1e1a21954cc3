"""Arrow schemas of the tables genreflow writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from genreflow.tokens import TokenSpec

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string()),  # catalog | decode | tokenize | ...
        pa.field("kind", pa.string()),  # missing | empty | undecodable | truncated | ...
        pa.field("error", pa.string()),
    ]
)

# Columns of a token shard besides ``tokens``, in order.
SHARD_META_FIELDS = [
    pa.field("track_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("genre", pa.string()),
    pa.field("genre_idx", pa.int32()),  # -1: no genre
    pa.field("artist_id", pa.string()),
    pa.field("valence", pa.float32()),  # NaN: unknown
    pa.field("lyrics", pa.string()),
    pa.field("uri", pa.string()),
    pa.field("duration_s", pa.float32()),  # audio present before padding
]


def tokens_type(spec: TokenSpec) -> pa.DataType:
    """Fixed-shape float16 tensor ``[n_tokens, n_mels, token_frames]``."""
    return pa.fixed_shape_tensor(pa.float16(), list(spec.token_shape))


def shard_schema(spec: TokenSpec) -> pa.Schema:
    return pa.schema([*SHARD_META_FIELDS, pa.field("tokens", tokens_type(spec))])


def tokens_array(tokens: np.ndarray, spec: TokenSpec) -> pa.Array:
    """``[rows, n_tokens, n_mels, token_frames]`` float16 -> an Arrow tensor column."""
    if tokens.shape[1:] != spec.token_shape:
        raise ValueError(f"tokens of shape {tokens.shape[1:]}, spec says {spec.token_shape}")
    return pa.FixedShapeTensorArray.from_numpy_ndarray(
        np.ascontiguousarray(tokens, dtype=np.float16)
    )


def tokens_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow tensor column -> ``[rows, ...]`` numpy array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.to_numpy_ndarray())
