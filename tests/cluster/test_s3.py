"""Every path on an S3-compatible endpoint: moto's standalone server on 127.0.0.1.

The catalog (manifest and audio) lives in a bucket; ingest, training, labelling and the
index read and write only ``s3://`` paths. Results are compared with the same stages
on local paths. Credentials come from the environment only, and never reach the output.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genreflow import storage
from genreflow.config import load_config
from genreflow.demo_catalog import make_demo_catalog
from genreflow.errors import GenreflowError
from genreflow.formats.index import open_index
from genreflow.formats.labels import read_labels
from genreflow.index import IndexConfig
from genreflow.ingest import IngestConfig
from genreflow.label import LabelConfig
from genreflow.pipelines.index import run_index
from genreflow.pipelines.ingest import run_ingest
from genreflow.pipelines.label import run_label
from genreflow.pipelines.train import run_train
from genreflow.train import TrainConfig
from tests.conftest import free_port, start_session_ray
from tests.faults import GENREFLOW, Endpoint, local_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = ["spec.clip_s=6", "spec.n_tokens=3", "spec.token_s=2.0", "spec.n_mels=64"]
BUCKET = "genreflow-test"
SECRET = "not-a-real-secret-9f8e7d"


def start_moto(log: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """moto's standalone S3 server on a free 127.0.0.1 port, once it accepts connections."""
    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
             str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
        )  # fmt: skip
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.time() > deadline:
                server.terminate()
                raise
            time.sleep(0.2)


MOTO_LOG: dict[str, Path] = {}  # the module's moto server writes every request here


def gets(key: str) -> int:
    """GET requests moto has served for ``key`` so far (its request log)."""
    text = MOTO_LOG["path"].read_text(errors="replace")
    return len(re.findall(rf"GET /{BUCKET}/{re.escape(key)}[ ?]", text))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server; Ray restarted so that its workers see the endpoint settings."""
    import ray

    MOTO_LOG["path"] = tmp_path_factory.mktemp("moto") / "server.log"
    server, port = start_moto(MOTO_LOG["path"])
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in settings}
    try:
        os.environ.update(settings)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        ray.shutdown()
        start_session_ray()
        yield f"s3://{BUCKET}"
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        start_session_ray()
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def local_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_catalog(
        tmp_path_factory.mktemp("s3-catalog"),
        tracks_per_genre=6,
        artists_per_genre=6,
        duration_s=6.0,
        genres=["ambient", "rock"],
    )


def upload(local_manifest: Path, bucket_uri: str) -> str:
    """The catalog folder into the bucket; URIs in the manifest stay relative."""
    client = boto3.client("s3")
    root = local_manifest.parent
    rows = pd.read_csv(local_manifest)
    for uri in rows["uri"]:
        client.upload_file(str(root / uri), BUCKET, f"catalog/{uri}")
    client.upload_file(str(local_manifest), BUCKET, "catalog/manifest.csv")
    return f"{bucket_uri}/catalog/manifest.csv"


def test_the_pipeline_on_s3_equals_the_pipeline_on_local_paths(
    s3: str, local_catalog: Path, tmp_path: Path
) -> None:
    manifest = upload(local_catalog, s3)
    remote = run_ingest(
        load_config(IngestConfig, overrides=SMALL, catalog=manifest, out=f"{s3}/dataset")
    )
    local = run_ingest(
        load_config(
            IngestConfig, overrides=SMALL, catalog=str(local_catalog), out=str(tmp_path / "ds")
        )
    )
    assert remote.rows_written == local.rows_written == 12 and not remote.failed
    shards = storage.list_files(f"{s3}/dataset/shards", suffix=".parquet")
    fs, _ = storage.resolve(shards[0])
    remote_rows = pq.read_table([storage.resolve(f)[1] for f in shards], filesystem=fs)
    local_rows = pq.read_table(tmp_path / "ds" / "shards")
    by_id = {t: i for i, t in enumerate(local_rows.column("track_id").to_pylist())}
    remote_ids = remote_rows.column("track_id").to_pylist()
    assert sorted(remote_ids) == sorted(by_id)
    r_tokens = remote_rows.column("tokens").combine_chunks().to_numpy_ndarray()
    l_tokens = local_rows.column("tokens").combine_chunks().to_numpy_ndarray()
    for i, track in enumerate(remote_ids):
        np.testing.assert_array_equal(r_tokens[i], l_tokens[by_id[track]])
    assert remote_rows.column("split").to_pylist() == [
        local_rows.column("split")[by_id[t]].as_py() for t in remote_ids
    ]

    trained = run_train(
        load_config(
            TrainConfig,
            overrides=["epochs=1", "batch_size=4"],
            data=f"{s3}/dataset",
            out=f"{s3}/runs/sig",
        )
    )
    checkpoint = trained.metrics["best_checkpoint"]
    assert checkpoint.startswith(f"{s3}/") and storage.exists(f"{s3}/runs/sig/metrics.json")

    places = [(f"{s3}/dataset", f"{s3}/labels"), (str(tmp_path / "ds"), str(tmp_path / "labels"))]
    for source, out in places:
        run_label(load_config(LabelConfig, checkpoint=checkpoint, input=source, out=out))
    remote_labels = read_labels(f"{s3}/labels").set_index("track_id").sort_index()
    local_labels = read_labels(str(tmp_path / "labels")).set_index("track_id").sort_index()
    assert list(remote_labels.index) == list(local_labels.index) and len(remote_labels) == 12
    assert list(remote_labels["genre"]) == list(local_labels["genre"])
    np.testing.assert_allclose(
        np.stack(remote_labels["embedding"].to_numpy()),
        np.stack(local_labels["embedding"].to_numpy()),
        atol=1e-6,
    )

    for labels, index in ((f"{s3}/labels", f"{s3}/index"), (places[1][1], str(tmp_path / "index"))):
        run_index(load_config(IndexConfig, overrides=["neighbours=3"], labels=labels, out=index))
    remote_index, local_index = open_index(f"{s3}/index"), open_index(str(tmp_path / "index"))
    assert remote_index.count == local_index.count == 12
    for track in local_labels.index[:4]:
        assert [r["track_id"] for r in remote_index.recommend(track, 3)] == [
            r["track_id"] for r in local_index.recommend(track, 3)
        ]

    # the secret never reaches anything written
    for key in boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]:
        if key["Key"].endswith((".json", ".csv", ".md", ".html")):
            body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key["Key"])["Body"].read()
            assert SECRET.encode() not in body, key["Key"]


def test_a_missing_bucket_is_a_clear_error_without_secrets(
    s3: str, local_catalog: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(GenreflowError) as info:
        run_ingest(
            load_config(
                IngestConfig,
                overrides=SMALL,
                catalog=str(local_catalog),
                out="s3://no-such-bucket/x",
            )
        )
    assert "no-such-bucket" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    with pytest.raises(GenreflowError, match="does not exist"):
        run_ingest(load_config(IngestConfig, catalog=f"{s3}/nothing/manifest.csv", out=f"{s3}/y"))
    proc = subprocess.run(
        [sys.executable, "jobs/ingest.py", "--config", "configs/ingest.yaml",
         f"catalog={local_catalog}", "out=s3://no-such-bucket/x", "resources.num_cpus=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no-such-bucket" in proc.stderr and SECRET not in proc.stderr + proc.stdout


def test_wrong_credentials_are_a_clear_error_without_secrets(
    local_catalog: Path, tmp_path: Path
) -> None:
    """A server that checks credentials (moto with authentication on from the first
    request) refuses unknown keys; the job names the path, exits 2, prints no secret."""
    server, port = start_moto(tmp_path / "server.log", INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        wrong = "wrong-secret-0a1b2c3d"
        proc = subprocess.run(
            [sys.executable, "jobs/ingest.py", "--config", "configs/ingest.yaml",
             f"catalog={local_catalog}", f"out=s3://{BUCKET}/x", "resources.num_cpus=1"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
            env={**os.environ, "RAY_ADDRESS": "", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                 "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY", "AWS_SECRET_ACCESS_KEY": wrong,
                 "AWS_REGION": "us-east-1"},
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert f"s3://{BUCKET}/x" in proc.stderr
    assert re.search(r"ACCESS_DENIED|InvalidAccessKeyId|AccessDenied", proc.stderr), output[-2000:]
    assert "check the credentials" in proc.stderr
    assert wrong not in output


def test_an_endpoint_that_dies_mid_write_publishes_nothing_and_a_rerun_completes(
    s3: str, local_catalog: Path, tmp_path: Path
) -> None:
    """The S3 endpoint goes down once the ingest job's first shard has landed (open
    connections reset, new ones refused). Each request is retried with backoff, then the
    job fails with a message naming the path and the endpoint, never the secret; it
    leaves no completion marker and no half-written object. With the endpoint back, the
    same command completes with the rows of an uninterrupted run."""
    client = boto3.client("s3")  # straight to the server, never through the proxy
    endpoint = Endpoint(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    cmd = [*GENREFLOW, "ingest", "--catalog", str(local_catalog), "--out", f"{s3}/faulty",
           *SMALL, "shard_size=2", "resources.num_cpus=2"]  # fmt: skip
    env = local_env(AWS_ENDPOINT_URL=endpoint.url, GENREFLOW_S3_ATTEMPTS="3")

    def keys(prefix: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return [item["Key"] for item in listed]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not keys("faulty/shards/") and proc.poll() is None:
            assert time.monotonic() < deadline, "no shard was written"
            time.sleep(0.02)
        endpoint.refuse()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its local Ray
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr[-3000:]
    assert f"{s3}/faulty" in stderr and "did not answer after 3 attempts" in stderr, stderr[-3000:]
    assert SECRET not in stdout + stderr
    assert "faulty/_dataset.json" not in keys("faulty/")
    for key in keys("faulty/shards/"):  # whatever landed is whole
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert pq.read_table(pa.BufferReader(body)).num_rows >= 1

    endpoint.accept()  # back (the rerun here talks to the server directly)
    rerun = run_ingest(
        load_config(
            IngestConfig,
            overrides=[*SMALL, "shard_size=2"],
            catalog=str(local_catalog),
            out=f"{s3}/faulty",
        )
    )
    assert not rerun.failed and rerun.skipped + rerun.rows_written == 12
    shards = storage.list_files(f"{s3}/faulty/shards", suffix=".parquet")
    fs, _ = storage.resolve(shards[0])
    ids = pq.read_table([storage.resolve(f)[1] for f in shards], filesystem=fs)["track_id"]
    expected = pd.read_csv(local_catalog)["track_id"].astype(str)
    assert sorted(ids.to_pylist()) == sorted(expected)  # each track once, none lost
    assert "faulty/_dataset.json" in keys("faulty/")


def test_a_track_in_s3_costs_a_few_requests(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest's and labelling's per-track work on a 30 s 320 kbps MP3 in S3: one GET for
    all of it (decode and digest); a file above the whole-object size a few ranged GETs."""
    import soundfile as sf

    from genreflow import audio
    from genreflow.ingest import ingest_shard
    from genreflow.label import decode_for_label
    from genreflow.tokens import TokenSpec

    t = np.arange(30 * 44100) / 44100
    wave = 0.3 * np.sin(2 * np.pi * 330 * t) * (1 + 0.2 * np.sin(2 * np.pi * 0.5 * t))
    path = tmp_path / "clip.mp3"
    sf.write(str(path), np.stack([wave, wave], axis=1).astype(np.float32), 44100,
             format="MP3", bitrate_mode="CONSTANT", compression_level=0.0)  # fmt: skip
    assert path.stat().st_size > 1_000_000  # 320 kbps, as FMA's best clips
    boto3.client("s3").upload_file(str(path), BUCKET, "requests/clip.mp3")
    uri = f"{s3}/requests/clip.mp3"
    rows = pd.DataFrame({"track_id": ["t1"], "uri": [uri], "genre": ["rock"]})
    spec = TokenSpec(n_tokens=10, token_s=3.0).to_dict()

    before = gets("requests/clip.mp3")
    summary = ingest_shard(
        rows, out=str(tmp_path / "ds"), spec=spec, vocabulary=["rock"], min_duration_s=1.0,
        allow_silent=False,
    )  # fmt: skip
    assert list(summary["status"]) == ["ok"]
    assert gets("requests/clip.mp3") - before <= 4

    before = gets("requests/clip.mp3")
    batch = decode_for_label(
        rows, spec=spec, errors_dir=str(tmp_path / "errors"), attempt="a1", min_duration_s=1.0,
        allow_silent=False,
    )  # fmt: skip
    assert len(batch["track_id"]) == 1
    assert gets("requests/clip.mp3") - before <= 4

    # above the whole-object size: blocks, still a handful of requests
    monkeypatch.setattr(audio, "WHOLE_OBJECT_BYTES", 100_000)
    monkeypatch.setattr(audio, "REMOTE_BLOCK_BYTES", 512 * 1024)
    before = gets("requests/clip.mp3")
    ingest_shard(
        rows, out=str(tmp_path / "ds2"), spec=spec, vocabulary=["rock"], min_duration_s=1.0,
        allow_silent=False,
    )  # fmt: skip
    assert 1 < gets("requests/clip.mp3") - before <= 6
