"""Ingest on a two-node Ray cluster against one node with the same CPUs, through the Jobs API.

    .venv/bin/python bench/cluster_bench.py [--clips 40] [--runs 2]

Starts, on 127.0.0.1, (a) one node with 2 CPUs, (b) a head with 1 CPU plus a second node
with 1 CPU (``ray start --head`` / ``ray start --address``; ``RAY_AUTH_MODE=disabled``
on both sides), and submits the same ingest job to each with ``ray job submit``. Reports
the job's own decode rate (clips/s from its summary) and the wall time from submission
to SUCCEEDED. Stops every Ray process of this machine at the end (``ray stop``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import make_clips

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


def start(nodes: list[int]) -> str:
    """Nodes with the given CPUs (the first is the head); returns the dashboard URL."""
    ray("stop", "--force")
    gcs, dash = free_port(), free_port()
    ray(
        "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        f"--num-cpus={nodes[0]}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", "--disable-usage-stats",
    )  # fmt: skip
    for cpus in nodes[1:]:
        ray("start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}")  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        status = ray("status", f"--address=127.0.0.1:{gcs}").stdout
        if len(re.findall(r"^\s*1 node_", status, re.M)) >= len(nodes) or (
            len(nodes) == 1 and "node_" in status
        ):
            break
        time.sleep(1)
    return f"http://127.0.0.1:{dash}"


def ingest(dashboard: str, manifest: Path, out: Path) -> tuple[float, float]:
    job = f"bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    ray(
        "job", "submit", f"--address={dashboard}", f"--submission-id={job}", "--working-dir",
        ".", "--no-wait", "--", "python", "jobs/ingest.py", "--config", "configs/ingest.yaml",
        f"catalog={manifest}", f"out={out}", "shard_size=4",
    )  # fmt: skip
    while True:
        status = ray("job", "status", f"--address={dashboard}", job).stdout.upper()
        if "SUCCEEDED" in status or "FAILED" in status or "STOPPED" in status:
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    logs = ray("job", "logs", f"--address={dashboard}", job).stdout
    if "SUCCEEDED" not in status:
        raise RuntimeError(logs[-3000:])
    match = re.search(r"([\d.]+) clips/s decoding", logs)
    return (float(match.group(1)) if match else float("nan")), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    paths = make_clips(args.clips)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "catalog.csv"
        rows = ["track_id,uri,genre,artist_id"] + [
            f"c{i},{p},{['a', 'b'][i % 2]},x{i}" for i, p in enumerate(paths)
        ]
        manifest.write_text("\n".join(rows) + "\n")
        results: dict[str, list[tuple[float, float]]] = {
            "one node, 2 CPUs": [],
            "two nodes, 1+1 CPUs": [],
        }
        try:
            for run in range(args.runs):  # alternate the layouts: the machine drifts
                for name, nodes in (("one node, 2 CPUs", [2]), ("two nodes, 1+1 CPUs", [1, 1])):
                    dashboard = start(nodes)
                    rate, wall = ingest(dashboard, manifest, Path(tmp) / f"out-{name[:3]}-{run}")
                    results[name].append((rate, wall))
                    print(
                        f"{name}, run {run + 1}: {rate:.1f} clips/s decoding, "
                        f"{wall:.1f} s submit-to-done",
                        flush=True,
                    )
        finally:
            ray("stop", "--force")
        base = max(r for r, _ in results["one node, 2 CPUs"])
        for name, values in results.items():
            best = max(r for r, _ in values)
            print(
                f"{name}: best {best:.1f} clips/s = {best / base:.2f}x; "
                f"walls {[round(w, 1) for _, w in values]} s"
            )


if __name__ == "__main__":
    main()
