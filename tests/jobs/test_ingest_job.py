"""jobs/ingest.py as a script, the way `ray job submit` runs it. (The script's whole run
is in tests/cluster/test_multinode.py, through the Jobs API, and in-process with the
shipped config in tests/pipelines/test_exit_codes.py.)"""

from __future__ import annotations

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


def test_ingest_job_names_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    proc = run_job("--config", "configs/ingest.yaml", "shard_sise=4")
    assert proc.returncode == 2
    assert "shard_sise" in proc.stderr and "shard_size" in proc.stderr
