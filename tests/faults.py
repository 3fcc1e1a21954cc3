"""The fault-injection harness: run a real command in its own process group and SIGKILL
the whole group (the command, its local Ray, every worker) at a point chosen by the
command's progress on disk, or at a named point of its work (``genreflow.faultpoints``),
never by a fixed sleep."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from genreflow.faultpoints import STOP_AT_ENV, STOP_FILE_ENV

GENREFLOW = [sys.executable, "-m", "genreflow.cli"]


def local_env(**extra: str) -> dict[str, str]:
    """The test process's environment for a command that must start its own local Ray."""
    return {**os.environ, "RAY_ADDRESS": "", **extra}


def kill_when(
    cmd: Sequence[str],
    ready: Callable[[], bool],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 240.0,
    poll_s: float = 0.02,
) -> bool:
    """Start ``cmd``; once ``ready()`` holds, SIGKILL its process group. Whether it was
    killed while still running (False: it ended first, or ``ready`` never held)."""
    proc = subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else local_env(),
        cwd=cwd,
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


def kill_at(
    cmd: Sequence[str],
    point: str,
    marker: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 240.0,
) -> bool:
    """Start ``cmd`` and SIGKILL it at its named point ``point`` (it waits there)."""
    stop = {STOP_AT_ENV: point, STOP_FILE_ENV: str(marker)}
    env = {**env, **stop} if env is not None else local_env(**stop)
    return kill_when(cmd, marker.exists, env=env, cwd=cwd, timeout_s=timeout_s)


def temporary_files(root: Path) -> list[Path]:
    """Files an interrupted atomic write could leave behind (none may be read)."""
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


class Endpoint:
    """A TCP proxy on 127.0.0.1 in front of a server (an S3 endpoint) that a test can
    take down mid-run, as a node loses its object store: :meth:`refuse` resets every
    open connection and refuses new ones on the same port; :meth:`accept` serves again."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.accept()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accept(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):  # RST, not a clean close
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
            self._open.clear()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused from now on
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
