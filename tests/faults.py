"""The fault-injection harness: run a real command in its own process group and SIGKILL
the whole group (the command, its local Ray, every worker) at a point chosen by the
command's progress on disk, never by a fixed sleep."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

GENREFLOW = [sys.executable, "-m", "genreflow.cli"]


def local_env() -> dict[str, str]:
    """The test process's environment for a command that must start its own local Ray."""
    return {**os.environ, "RAY_ADDRESS": ""}


def kill_when(
    cmd: Sequence[str], ready: Callable[[], bool], *, timeout_s: float = 240.0, poll_s: float = 0.02
) -> bool:
    """Start ``cmd``; once ``ready()`` holds, SIGKILL its process group. Whether it was
    killed while still running (False: it ended first, or ``ready`` never held)."""
    proc = subprocess.Popen(
        list(cmd),
        env=local_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = False
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                killed = proc.poll() is None
                break
            time.sleep(poll_s)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its local Ray may outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return killed
