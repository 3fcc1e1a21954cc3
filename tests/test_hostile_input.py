"""Hostile input, generated (hypothesis): random, truncated and mislabelled bytes and
cells for the decoder, the manifest reader and the FMA reader. Whatever comes in, no
reader crashes with anything but a clear CatalogError about the whole table, and every
row ends as a track or as an error row that names it."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genreflow.catalog import SPLITS, CatalogOptions, read_catalog, read_fma, read_manifest
from genreflow.decode import decode_tokens
from genreflow.errors import CatalogError
from genreflow.tokens import TokenSpec
from tests.test_catalog import write_fma_metadata

SPEC = TokenSpec(clip_s=1.0, n_tokens=1, token_s=1.0, n_mels=16, n_fft=256, hop_length=128)
PROFILE = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _encoded(fmt: str, subtype: str | None) -> bytes:
    t = np.arange(22050) / 22050
    samples = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 22050, format=fmt, subtype=subtype)
    return buffer.getvalue()


VALID = {".wav": _encoded("WAV", "PCM_16"), ".flac": _encoded("FLAC", "PCM_16")}
VALID[".mp3"] = _encoded("MP3", None)
VALID[".ogg"] = _encoded("OGG", "VORBIS")

audio_file = st.one_of(
    st.tuples(st.sampled_from(sorted(VALID)), st.binary(max_size=600)),  # noise
    st.builds(  # a real file cut short
        lambda ext, frac: (ext, VALID[ext][: int(len(VALID[ext]) * frac)]),
        st.sampled_from(sorted(VALID)),
        st.floats(0.0, 1.0),
    ),
    st.builds(  # a real file with another format's name
        lambda ext, other: (other, VALID[ext]),
        st.sampled_from(sorted(VALID)),
        st.sampled_from(sorted(VALID)),
    ),
    st.builds(  # a real file with its middle overwritten
        lambda ext, at, noise: (ext, VALID[ext][:at] + noise + VALID[ext][at + len(noise) :]),
        st.sampled_from(sorted(VALID)),
        st.integers(0, 400),
        st.binary(min_size=1, max_size=200),
    ),
)


@PROFILE
@given(files=st.lists(audio_file, min_size=1, max_size=4))
def test_the_decoder_turns_any_bytes_into_tokens_or_error_rows(
    files: list[tuple[str, bytes]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        ids, uris = [], []
        for i, (ext, data) in enumerate(files):
            path = Path(folder) / f"track {i}{ext}"
            path.write_bytes(data)
            ids.append(f"t{i}")
            uris.append(str(path))
        decoded = decode_tokens(ids, uris, SPEC, min_duration_s=0.0, digests=True)
    failed = [e["track_id"] for e in decoded.errors]
    assert sorted(decoded.index + [ids.index(t) for t in failed]) == list(range(len(files)))
    assert len(decoded.tokens) == len(decoded.index) == len(decoded.clip_digests)
    assert np.isfinite(decoded.tokens.astype(np.float32)).all()
    for error in decoded.errors:
        assert error["track_id"] in ids and error["uri"] == uris[ids.index(error["track_id"])]
        assert Path(error["uri"]).name in error["error"], error  # the message names the file
        assert error["kind"] != "internal", error  # every failure is one the decoder knows


cell = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "nan", "NA", "train", "val", "test", "\x00", "../../etc/passwd"]),
)


@PROFILE
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "track_id": cell,
                "uri": st.one_of(cell, st.just("good.wav"), st.just("file:///nope.wav")),
                "genre": cell,
                "split": st.one_of(st.none(), st.sampled_from(SPLITS)),
                "valence": cell,
                "lyrics": cell,
            }
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_manifest_of_random_cells_yields_tracks_and_problems_that_name_each_row(
    rows: list[dict[str, str | None]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.csv"
        pd.DataFrame(rows).to_csv(manifest, index=False)
        read_back = len(pd.read_csv(manifest, dtype=str, keep_default_na=False))
        try:
            catalog = read_manifest(manifest)
        except CatalogError:
            return  # the table as a whole is refused, with a message
    assert len(catalog.tracks) + len(catalog.problems) == read_back
    assert catalog.tracks["track_id"].is_unique
    assert catalog.tracks["split"].dropna().isin(SPLITS).all()
    valence = catalog.tracks["valence"].dropna()
    assert ((valence >= 0) & (valence <= 1)).all()
    for problem in catalog.problems.itertuples():
        assert problem.track_id or problem.uri is not None  # the row is named
        assert problem.error


@PROFILE
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 7),  # row
            st.sampled_from(["set.split", "set.subset", "track.genre_top", "artist.id", "id"]),
            cell,
        ),
        max_size=5,
    ),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_fma_metadata_with_mislabelled_or_truncated_cells_never_crashes(
    edits: list[tuple[int, str, str | None]], cut: float | None
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        meta = Path(folder) / "fma_metadata"
        write_fma_metadata(meta)
        tracks = pd.read_csv(meta / "tracks.csv", index_col=0, header=[0, 1]).astype(object)
        index = [str(i) for i in tracks.index]
        for row, column, value in edits:
            if column == "id":
                index[row] = "" if value is None else value
            else:
                tracks.loc[tracks.index[row], tuple(column.split("."))] = value
        tracks.index = pd.Index(index, name="track_id")
        text = tracks.to_csv()
        if cut is not None:
            text = text[: int(len(text) * cut)]
        (meta / "tracks.csv").write_text(text)
        try:
            catalog = read_fma(meta, audio_dir=Path(folder) / "audio", subset="large")
        except CatalogError:
            return
        assert catalog.tracks["track_id"].is_unique
        assert catalog.tracks["split"].dropna().isin(SPLITS).all()
        assert (len(catalog.tracks) + len(catalog.problems)) <= len(tracks)
        with contextlib.suppress(CatalogError):
            read_catalog(str(Path(folder)), CatalogOptions(audio_dir=str(Path(folder) / "audio")))


def test_the_generated_inputs_include_what_the_readers_must_accept() -> None:
    """The strategies are not vacuous: a valid file decodes, a valid manifest reads."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ok.wav"
        path.write_bytes(VALID[".wav"])
        assert decode_tokens(["ok"], [str(path)], SPEC).index == [0]
        (Path(folder) / "m.csv").write_text(f"track_id,uri\nok,{path}\n")
        assert len(read_manifest(Path(folder) / "m.csv").tracks) == 1


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
