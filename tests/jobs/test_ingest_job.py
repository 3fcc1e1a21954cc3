"""jobs/ingest.py end to end as a script, the way `ray job submit` runs it (local Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_job(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run(
        [sys.executable, "jobs/ingest.py", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ingest_job_script_with_the_shipped_config(small_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    proc = run_job(
        "--config", "configs/ingest.yaml", f"catalog={small_manifest}", f"out={out}", "num_cpus=2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 rows written" in proc.stdout and "clips/s" in proc.stdout
    manifest = json.loads((out / "_dataset.json").read_text())
    assert manifest["counts"]["rows"] == 8


def test_ingest_job_names_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    proc = run_job("--config", "configs/ingest.yaml", "shard_sise=4")
    assert proc.returncode == 2
    assert "shard_sise" in proc.stderr and "shard_size" in proc.stderr
