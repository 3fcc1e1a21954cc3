"""Ray ingest against a plain in-process loop, reruns, interruption, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from genreflow import cli
from genreflow.catalog import read_catalog
from genreflow.config import load_config
from genreflow.decode import tokenize_track
from genreflow.errors import CatalogError, SpecMismatchError
from genreflow.formats.dataset import read_dataset_manifest, tokens_numpy
from genreflow.ingest import IngestConfig
from genreflow.pipelines.ingest import run_ingest
from tests.audio_fixtures import write_audio, write_tone
from tests.faults import GENREFLOW, kill_at, kill_when

pytestmark = pytest.mark.usefixtures("ray_session")


def read_rows(out: Path) -> pd.DataFrame:
    table = pq.read_table(out / "shards")
    frame = table.drop(["tokens"]).to_pandas()
    frame["tokens"] = list(tokens_numpy(table.column("tokens")))
    return frame.sort_values("track_id").reset_index(drop=True)


def read_errors(out: Path) -> pd.DataFrame:
    if not (out / "errors").exists():
        return pd.DataFrame(columns=["track_id", "kind"])
    return pq.read_table(out / "errors").to_pandas().sort_values("track_id").reset_index(drop=True)


def ingest(manifest: Path, out: Path, *overrides: str) -> object:
    return run_ingest(
        load_config(IngestConfig, overrides=list(overrides), catalog=str(manifest), out=str(out))
    )


def test_ray_ingest_equals_a_plain_loop(small_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ingest(small_manifest, out, "shard_size=3")
    assert result.rows_written == 8 and result.errors == 0  # type: ignore[attr-defined]
    rows = read_rows(out)
    catalog = (
        read_catalog(str(small_manifest)).tracks.sort_values("track_id").reset_index(drop=True)
    )
    assert list(rows["track_id"]) == list(catalog["track_id"])
    spec = IngestConfig().spec
    manifest = read_dataset_manifest(str(out))
    vocab = manifest["labels"]["genre"]
    assert vocab == ["high", "low"]
    for row, cat in zip(rows.itertuples(), catalog.itertuples(), strict=True):
        expected, duration = tokenize_track(cat.uri, spec, min_duration_s=1.0)
        np.testing.assert_array_equal(row.tokens, expected)
        assert row.genre == cat.genre and row.genre_idx == vocab.index(cat.genre)
        assert row.split == cat.split and row.artist_id == cat.artist_id
        assert row.duration_s == pytest.approx(duration)
        assert row.valence == pytest.approx(cat.valence)
        assert pd.isna(row.lyrics) == pd.isna(cat.lyrics)
    assert manifest["counts"]["rows"] == 8
    assert manifest["token_shape"] == list(spec.token_shape)
    assert manifest["spec_hash"] == spec.spec_hash()
    assert sum(manifest["counts"]["by_split"].values()) == 8


def test_rerun_skips_done_tracks_and_adds_only_new_ones(
    small_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ingest(small_manifest, out, "shard_size=4")
    again = ingest(small_manifest, out, "shard_size=4")
    assert again.rows_written == 0 and again.skipped == 8  # type: ignore[attr-defined]
    grown = pd.read_csv(small_manifest)
    extra = write_tone(small_manifest.parent / "audio" / "new.wav", 300.0, duration_s=2.0)
    grown.loc[len(grown)] = {"track_id": "new", "uri": str(extra), "genre": "low", "artist_id": "z"}
    grown.to_csv(small_manifest, index=False)
    third = ingest(small_manifest, out, "shard_size=4")
    assert third.rows_written == 1 and third.skipped == 8  # type: ignore[attr-defined]
    rows = read_rows(out)
    assert rows["track_id"].is_unique and len(rows) == 9


def test_an_interrupted_run_resumes_to_the_same_rows(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    rows = []
    for i in range(16):
        path = write_tone(audio / f"k{i:02d}.ogg", 200.0 + 40 * i, duration_s=12.0, seed=i)
        rows.append({"track_id": f"k{i:02d}", "uri": str(path), "genre": "g" + str(i % 2)})
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "interrupted"
    cmd = [*GENREFLOW, "ingest", "--catalog", str(manifest), "--out", str(out), "shard_size=2",
           "resources.num_cpus=1"]  # fmt: skip
    kill_when(cmd, lambda: len(list((out / "shards").glob("part-*.parquet"))) >= 2)
    written = list((out / "shards").glob("part-*.parquet"))
    assert 1 <= len(written) < 8, "the run should have been killed part-way"
    assert not (out / "_dataset.json").exists()  # nothing claims to be finished
    resumed = ingest(manifest, out, "shard_size=2")
    assert resumed.skipped >= 2  # type: ignore[attr-defined]
    clean = tmp_path / "clean"
    ingest(manifest, clean, "shard_size=5")
    a, b = read_rows(out), read_rows(clean)
    assert list(a["track_id"]) == list(b["track_id"]) == [r["track_id"] for r in rows]
    for x, y in zip(a["tokens"], b["tokens"], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not list(out.rglob("*.tmp"))


def test_a_run_killed_while_publishing_is_finished_by_the_rerun(
    tmp_path: Path, small_manifest: Path
) -> None:
    """SIGKILL of the ingest command with every shard written, just before it writes
    ``_dataset.json`` (its completion marker): the folder is not claimed finished; the
    rerun keeps every shard, writes nothing again and marks the folder done."""
    out = tmp_path / "out"
    cmd = [*GENREFLOW, "ingest", "--catalog", str(small_manifest), "--out", str(out),
           "shard_size=2", "resources.num_cpus=1"]  # fmt: skip
    assert kill_at(cmd, "ingest:before-manifest", tmp_path / "stopped")
    assert not (out / "_dataset.json").exists() and not list(out.rglob("*.tmp"))
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("part-*.parquet")}
    assert shards
    resumed = ingest(small_manifest, out, "shard_size=2")
    assert resumed.rows_written == 0 and (out / "_dataset.json").exists()  # type: ignore[attr-defined]
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("part-*.parquet")} == shards
    clean = ingest(small_manifest, tmp_path / "clean", "shard_size=2")
    assert resumed.manifest["counts"] == clean.manifest["counts"]  # type: ignore[attr-defined]


def bad_input_manifest(tmp_path: Path) -> Path:
    audio = tmp_path / "audio"
    good = [write_tone(audio / f"good{i}.mp3", 300.0 * (i + 1), duration_s=3.0) for i in range(4)]
    (audio / "empty.mp3").write_bytes(b"")
    (audio / "text.mp3").write_text("definitely not an mp3\n" * 50)
    whole = write_tone(audio / "whole.mp3", 440.0, duration_s=20.0).read_bytes()
    (audio / "truncated.mp3").write_bytes(whole[: len(whole) // 4])
    write_audio(audio / "silent.wav", np.zeros((22050 * 2, 1), np.float32), 22050)
    write_tone(audio / "short.wav", 440.0, duration_s=0.5)
    names = ["empty.mp3", "text.mp3", "truncated.mp3", "silent.wav", "short.wav", "missing.mp3"]
    rows = [{"track_id": p.stem, "uri": str(p), "genre": "ok"} for p in good]
    rows += [{"track_id": n.split(".")[0], "uri": str(audio / n), "genre": "ok"} for n in names]
    rows.append({"track_id": "nouri", "uri": None, "genre": "ok"})
    rows.append({"track_id": "good0", "uri": str(good[1]), "genre": "ok"})  # duplicate id
    manifest = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_bad_input_becomes_error_rows_and_the_job_finishes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ingest(bad_input_manifest(tmp_path), out, "max_error_rate=0.9", "shard_size=4")
    assert not result.failed  # type: ignore[attr-defined]
    assert sorted(read_rows(out)["track_id"]) == ["good0", "good1", "good2", "good3"]
    errors = read_errors(out)
    kinds = dict(zip(errors["track_id"], errors["kind"], strict=True))
    assert kinds == {
        "empty": "empty",
        "text": "undecodable",
        "truncated": "truncated",
        "silent": "silent",
        "short": "too_short",
        "missing": "missing",
        "nouri": "bad_row",
        "good0": "duplicate_track_id",
    }
    assert (errors["error"].str.len() > 10).all()
    counts = read_dataset_manifest(str(out))["counts"]
    assert counts["rows"] == 4 and counts["errors"] == 8
    # a rerun neither retries recorded errors nor duplicates their rows
    again = ingest(tmp_path / "bad.csv", out, "max_error_rate=0.9")
    assert again.rows_written == 0 and again.errors == 0  # type: ignore[attr-defined]
    assert len(read_errors(out)) == 8
    # a run cut before good0's shard: the rerun ingests good0 (its refused repeat is no
    # outcome of the track) and records the catalog's refused rows once
    for shard in (out / "shards").glob("*.parquet"):
        if "good0" in pq.read_table(shard, columns=["track_id"]).column(0).to_pylist():
            shard.unlink()
    resumed = ingest(tmp_path / "bad.csv", out, "max_error_rate=0.9")
    assert resumed.rows_written > 0 and resumed.errors == 0  # type: ignore[attr-defined]
    assert sorted(read_rows(out)["track_id"]) == ["good0", "good1", "good2", "good3"]
    assert len(read_errors(out)) == 8


def test_a_failure_rate_above_the_threshold_exits_non_zero_after_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = bad_input_manifest(tmp_path)
    code = cli.main(["ingest", "--catalog", str(manifest), "--out", str(out), "max_error_rate=0.5"])
    assert code == 1
    assert len(read_rows(out)) == 4  # what succeeded is kept
    assert (out / "_dataset.json").exists()


def test_padding_short_and_silent_clips_when_configured(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest(
        bad_input_manifest(tmp_path),
        out,
        "min_duration_s=0",
        "allow_silent=true",
        "max_error_rate=1",
    )
    rows = read_rows(out).set_index("track_id")
    assert {"short", "silent"} <= set(rows.index)
    assert rows.loc["short", "duration_s"] == pytest.approx(0.5, abs=0.01)


def test_catalog_problems_stop_the_job_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("name,path\nx,y\n")
    with pytest.raises(CatalogError, match="track_id"):
        ingest(tmp_path / "m.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert (
        cli.main(["ingest", "--catalog", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")])
        == 2
    )


def test_another_token_spec_into_the_same_output_is_refused(
    small_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ingest(small_manifest, out, "limit=2")
    with pytest.raises(SpecMismatchError, match="token_s"):
        ingest(small_manifest, out, "spec=paper001")


def test_cli_ingests_a_folder_of_real_music_files_from_a_manifest(tmp_path: Path) -> None:
    music = tmp_path / "music"
    files = [
        write_tone(music / "a.mp3", 261.6, duration_s=5.0, sample_rate=44100, channels=2),
        write_tone(music / "b.ogg", 329.6, duration_s=5.0, sample_rate=48000, channels=2),
        write_tone(music / "c.flac", 392.0, duration_s=5.0, sample_rate=16000),
        write_tone(music / "d.wav", 523.3, duration_s=5.0, sample_rate=8000),
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "track_id": [f.stem for f in files],
            "uri": [f"music/{f.name}" for f in files],
            "genre": ["x", "y", "x", "y"],
        }
    ).to_csv(manifest, index=False)
    out = tmp_path / "out"
    assert cli.main(["ingest", "--catalog", str(manifest), "--out", str(out)]) == 0
    assert sorted(read_rows(out)["track_id"]) == ["a", "b", "c", "d"]


def test_duplicate_audio_is_found_by_content_and_never_split_across_train_and_test(
    tmp_path: Path,
) -> None:
    """Planted copies: the same file under another name, and the same audio with other
    tags (other bytes, the same decoded clip), both in train while their originals are
    in test. A tone with other noise is not a copy."""
    audio = tmp_path / "audio"
    a = write_tone(audio / "a.wav", 440.0)
    b = write_tone(audio / "b.wav", 550.0)
    c = write_tone(audio / "c.wav", 440.0, seed=7)  # like a, other noise: not a copy
    (audio / "z-copy.wav").write_bytes(a.read_bytes())
    pcm, rate = sf.read(b, dtype="int16")
    with sf.SoundFile(audio / "y-retagged.wav", "w", samplerate=rate, channels=1) as tagged:
        tagged.title, tagged.artist = "a re-tagged copy", "someone"  # b's audio, other bytes
        tagged.write(pcm)
    rows = [
        ("a", a, "test"), ("b", b, "test"), ("c", c, "train"),
        ("z-copy", audio / "z-copy.wav", "train"),
        ("y-retagged", audio / "y-retagged.wav", "train"),
    ]  # fmt: skip
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        [{"track_id": t, "uri": str(u), "genre": "g", "split": s} for t, u, s in rows]
    ).to_csv(manifest, index=False)
    out = tmp_path / "ds"
    result = ingest(manifest, out)
    shards = read_rows(out).set_index("track_id")
    assert (
        shards.loc["z-copy", "split"] == "duplicate"
        and shards.loc["y-retagged", "split"] == "duplicate"
    )
    assert shards.loc[["a", "b", "c"], "split"].tolist() == ["test", "test", "train"]
    assert shards.loc["z-copy", "audio_sha256"] == shards.loc["a", "audio_sha256"]
    assert shards.loc["y-retagged", "audio_sha256"] != shards.loc["b", "audio_sha256"]
    assert shards.loc["y-retagged", "clip_sha256"] == shards.loc["b", "clip_sha256"]
    errors = read_errors(out).set_index("track_id")
    assert errors.loc["z-copy", "kind"] == errors.loc["y-retagged", "kind"] == "duplicate_audio"
    assert (
        errors.loc["z-copy", "duplicate_of"] == "a"
        and errors.loc["y-retagged", "duplicate_of"] == "b"
    )
    assert "the same audio as track a" in errors.loc["z-copy", "error"]
    assert "c" not in errors.index
    manifest_json = json.loads((out / "_dataset.json").read_text())
    assert manifest_json["counts"]["duplicates"] == 2
    assert manifest_json["counts"]["by_split"] == {"duplicate": 2, "test": 2, "train": 1}
    assert not result.failed and "2 tracks repeat another's audio" in result.summary()
    # a rerun finds the same, changes nothing
    before = {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.parquet"))}
    again = ingest(manifest, out)
    assert again.rows_written == 0
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.parquet"))} == before
    assert read_errors(out).set_index("track_id").loc["z-copy", "duplicate_of"] == "a"
