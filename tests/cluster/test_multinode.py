"""The jobs through the Ray Jobs API on a real two-node Ray cluster on 127.0.0.1.

A head (``ray start --head``) and a second node (``ray start --address ...``), each
with one CPU, both with ``RAY_AUTH_MODE=disabled`` (as is the client), which is Ray's
documented way to run without token authentication on a trusted network. The cluster keeps
its files in a temporary folder of its own and is stopped by ending its own processes
(those naming that folder or its GCS port, and their children): ``ray stop`` would end
every Ray of the machine, another test's or a user's among them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from genreflow.demo_catalog import make_demo_catalog
from tests.conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
SMALL = ["spec.clip_s=6", "spec.n_tokens=3", "spec.token_s=2.0", "spec.n_mels=64"]


def env() -> dict[str, str]:
    """The client's and the nodes' environment: no token authentication, and this
    virtual environment first on PATH, so a job's ``python`` is the one with genreflow's
    dependencies (on a real cluster: the image's)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    path = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
    return {**clean, "PATH": path, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAY, *args], env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def node_ports() -> list[str]:
    """Free ports for a node's agents, whose defaults (52365, ...) another Ray on the
    machine may hold: a local Ray of another test, or a user's."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


class Cluster:
    def __init__(self) -> None:
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.temp_dir = tempfile.mkdtemp(prefix="gf-ray-", dir="/tmp")  # short: socket paths

    def start(self) -> None:
        dash_port = self.dashboard.rsplit(":", 1)[1]
        head = ray_cli(
            "start", "--head", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs.rsplit(':', 1)[1]}", "--num-cpus=1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}", f"--ray-client-server-port={free_port()}",
            *node_ports(),
        )  # fmt: skip
        assert head.returncode == 0, head.stderr[-2000:]
        worker = ray_cli(
            "start", f"--address={self.gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            "--resources", '{"second_node": 1}', *node_ports(),
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr[-2000:]
        deadline = time.time() + 60
        while time.time() < deadline:
            status = ray_cli("status", f"--address={self.gcs}")
            if status.returncode == 0 and "second_node" in status.stdout:
                return
            time.sleep(1)
        raise AssertionError(f"the second node never joined: {status.stdout}{status.stderr}")

    def stop(self) -> None:
        """End this cluster's processes and theirs (job drivers, workers), nothing else."""
        import psutil

        port = self.gcs.rsplit(":", 1)[1]
        own = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            words = proc.info["cmdline"] or []
            if any(self.temp_dir in w or w.endswith(f":{port}") for w in words):
                own.append(proc)
        everything = {p.pid: p for p in own}
        for proc in own:
            with contextlib.suppress(psutil.Error):
                everything.update({c.pid: c for c in proc.children(recursive=True)})
        for proc in everything.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(list(everything.values()), timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def submit(self, script: str, config: str, *overrides: str) -> str:
        job = f"genreflow-test-{uuid.uuid4().hex[:8]}"
        proc = ray_cli(
            "job", "submit", f"--address={self.dashboard}", f"--submission-id={job}",
            "--working-dir", ".", "--no-wait", "--",
            "python", script, "--config", config, *overrides,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return job

    def wait(self, job: str, timeout: float = 420) -> tuple[str, str]:
        """Follow the job's logs until it ends (one mostly idle CLI process: a status
        poll is a CLI start, about 1.5 s of CPU, taken from the job on these 2 cores),
        then read its final status."""
        try:
            logs = ray_cli(
                "job", "logs", "--follow", f"--address={self.dashboard}", job, timeout=timeout
            ).stdout
        except subprocess.TimeoutExpired as exc:
            return "TIMEOUT", str(exc.stdout or "")
        proc = ray_cli("job", "status", f"--address={self.dashboard}", job)
        # "Status for job 'x': RUNNING", then "Job 'x' succeeded" / "Job 'x' failed"
        match = re.search(
            r"\b(pending|running|succeeded|failed|stopped)\b", proc.stdout, re.IGNORECASE
        )
        status = match.group(1).upper() if match else proc.stdout + proc.stderr
        return status, logs

    def run(self, script: str, config: str, *overrides: str) -> str:
        status, logs = self.wait(self.submit(script, config, *overrides))
        assert status == "SUCCEEDED", logs[-4000:]
        return logs

    def task_nodes(self, name_part: str) -> set[str]:
        """Nodes that ran finished tasks whose name contains ``name_part``."""
        proc = ray_cli(
            "list", "tasks", f"--address={self.dashboard}", "--format=json", "--detail",
            "--limit=10000", "--filter", "state=FINISHED",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        tasks = json.loads(proc.stdout)
        return {t["node_id"] for t in tasks if name_part in t["name"] and t.get("node_id")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    import ray

    from tests.conftest import start_session_ray

    ray.shutdown()  # its CPUs go to the cluster's jobs while this module runs
    made = Cluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()
        start_session_ray()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_catalog(
        tmp_path_factory.mktemp("cluster-catalog"),
        tracks_per_genre=8,
        artists_per_genre=8,
        duration_s=6.0,
        genres=["ambient", "rock"],
    )


def submit_line(job: str) -> list[str]:
    """The ``ray job submit ...`` line that opens ``configs/<job>.yaml``, as words."""
    first = (REPO / "configs" / f"{job}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ray job submit --working-dir . -- python jobs/"), first
    return shlex.split(first.removeprefix("# "))


def localised(words: list[str], paths: dict[str, Path]) -> list[str]:
    """``words`` with every ``key=<path>`` value that names a cluster path (``s3://``,
    ``/data/``) replaced by its local stand-in; nothing else changes."""
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep and value.startswith(("s3://", "/data/")):
            word = f"{key}={paths[value]}"
        out.append(word)
    return out


@pytest.fixture(scope="module")
def submitted(cluster: Cluster, catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each YAML's own submit line, in pipeline order, its paths made local, submitted
    with the ``ray`` CLI; returns the folder of their outputs and ``<job>.log`` files.

    Small-data overrides follow the line (a smaller token spec, fewer epochs, one of the
    four models): the line itself is run as written. Training asks for three 1-CPU
    workers, one more than the two nodes hold: a third node joins once the job says it
    waits (and 2 s more), as an autoscaler's would, and is removed after the last job."""
    tmp_path = tmp_path_factory.mktemp("submitted")
    bucket = "s3://my-bucket/genreflow/"
    paths = {
        "/data/fma_metadata": catalog,
        bucket + "catalog.parquet": catalog,
        **{bucket + n: tmp_path / n for n in ("dataset", "labels", "index", "report")},
        bucket + "runs/signature-1": tmp_path / "run",
        bucket + "compare-1": tmp_path / "compare",
    }
    small = {
        "ingest": ["shard_size=2", *SMALL],
        "train": ["epochs=2", "batch_size=4", "resources.num_workers=3"],
        "index": ["neighbours=3"],
        "compare": ["models=[baseline_cnn]", "train.epochs=1"],
    }
    client = {**env(), "RAY_ADDRESS": cluster.dashboard, "PYTHONUNBUFFERED": "1"}
    third: list[int] = []
    try:
        for job in ("ingest", "train", "label", "index", "analyze", "compare"):
            words = [*localised(submit_line(job), paths), *small.get(job, [])]
            log = tmp_path / f"{job}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    words, cwd=REPO, env=client, stdout=out, stderr=subprocess.STDOUT
                )
                if job == "train":
                    deadline = time.monotonic() + 240
                    while "waiting for 3 CPU" not in log.read_text() and proc.poll() is None:
                        assert time.monotonic() < deadline, log.read_text()[-3000:]
                        time.sleep(0.2)
                    time.sleep(2.0)  # it keeps waiting: no epoch starts on two nodes
                    (tmp_path / "train-while-waiting.log").write_text(log.read_text())
                    third = add_node(cluster, "third_node")
                returncode = proc.wait(timeout=600)
            assert returncode == 0, f"{job}: {log.read_text()[-5000:]}"
    finally:
        remove_node(third)
    return tmp_path


def test_every_configs_submit_line_runs_and_training_waits_for_a_node(
    cluster: Cluster, submitted: Path, catalog: Path
) -> None:
    tmp_path = submitted
    logs = {p.stem: p.read_text() for p in tmp_path.glob("*.log")}
    data = tmp_path / "dataset"
    assert "16 rows written" in logs["ingest"]
    shards = pd.read_parquet(data / "shards", columns=["track_id"])
    assert sorted(shards["track_id"]) == sorted(pd.read_csv(catalog)["track_id"])
    assert len(cluster.task_nodes("ingest_shard")) == 2  # the decode tasks ran on both nodes
    # training asked for 3 CPUs on a 2-CPU cluster, waited, and trained once the node came
    early = logs["train-while-waiting"]
    assert "waiting for 3 CPU: 2 CPU available, cluster scaling" in early, early[-3000:]
    assert "epoch 1/2" not in early
    # the autoscaler was asked for the three workers' CPUs before the wait, and the
    # request withdrawn once training ended (each line follows Ray's call returning)
    asked = "asked the autoscaler for [{'CPU': 1.0}, {'CPU': 1.0}, {'CPU': 1.0}]"
    assert asked in early and early.index(asked) < early.index("waiting for 3 CPU")
    withdrawn = "asked the autoscaler for nothing (request withdrawn)"
    assert logs["train"].index(withdrawn) > logs["train"].index("epoch 2/2")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]).is_dir() and "test" in metrics
    assert metrics["epochs_run"] == 2 and metrics["config"]["resources"]["num_workers"] == 3
    runs = list((tmp_path / "labels").glob("run-*/_run.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["labelled"] == 16
    info = json.loads((tmp_path / "index" / "index.json").read_text())
    assert info["count"] == 16 and "recall@10" in logs["index"]
    assert (tmp_path / "report" / "report.html").is_file()
    table = (tmp_path / "compare" / "comparison.md").read_text()
    assert "| baseline_cnn | ok |" in table


def add_node(cluster: Cluster, resource: str) -> list[int]:
    """Start one more 1-CPU node; its raylet's pid (and so its process tree)."""
    port = free_port()
    started = ray_cli(
        "start", f"--address={cluster.gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
        f"--node-manager-port={port}", "--resources", json.dumps({resource: 1}), *node_ports(),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    pids = raylets_on_port(port)
    assert len(pids) == 1
    return pids


def remove_node(pids: list[int]) -> None:
    import psutil

    for pid in pids:
        raylet = psutil.Process(pid)
        for proc in [*raylet.children(recursive=True), raylet]:
            proc.kill()


def test_failing_jobs_report_failed_with_their_error(cluster: Cluster, catalog: Path) -> None:
    """A mistyped key, and a relative output path (the job's working directory is Ray's
    temporary copy of --working-dir): both jobs fail before any work, saying why."""
    typo = cluster.submit("jobs/ingest.py", "configs/ingest.yaml", "shard_sise=4")
    relative = cluster.submit(
        "jobs/ingest.py", "configs/ingest.yaml", f"catalog={catalog}", "out=o"
    )
    status, logs = cluster.wait(typo)
    assert status == "FAILED"
    assert "shard_sise" in logs and "shard_size" in logs
    status, logs = cluster.wait(relative)
    assert status == "FAILED"
    assert "out='o' is a relative path" in logs and "s3://" in logs


def test_an_unreachable_cluster_is_a_clear_error(catalog: Path, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "jobs/ingest.py", "--config", "configs/ingest.yaml",
         f"resources.address={dead}", f"catalog={catalog}", f"out={tmp_path / 'o'}"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot reach the Ray cluster at '{dead}'" in proc.stderr


def raylets_on_port(port: int) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "raylet" in cmdline and f"--node_manager_port={port}" in cmdline:
            found.append(int(proc.info["pid"]))
    return found


def test_a_worker_node_killed_during_ingest(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Ray retries the lost node's tasks elsewhere; every track lands exactly once."""

    manifest = make_demo_catalog(
        tmp_path_factory.mktemp("kill-catalog"), tracks_per_genre=9, artists_per_genre=9,
        duration_s=15.0, genres=["ambient", "rock"],
    )  # fmt: skip
    doomed = add_node(cluster, "doomed_node")
    out = tmp_path / "dataset"
    job = cluster.submit(
        "jobs/ingest.py", "configs/ingest.yaml", f"catalog={manifest}", f"out={out}",
        "shard_size=1",
    )  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "shards").glob("*.parquet"))) < 3:
        time.sleep(0.2)
    assert list((out / "shards").glob("*.parquet")), "ingest never started writing"
    remove_node(doomed)
    status, logs = cluster.wait(job)
    assert status == "SUCCEEDED", logs[-4000:]
    written = pd.read_parquet(out / "shards", columns=["track_id"])["track_id"]
    assert sorted(written) == sorted(pd.read_csv(manifest)["track_id"])  # each exactly once
    assert json.loads((out / "_dataset.json").read_text())["counts"]["rows"] == 18
