from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.audio_fixtures import write_tone

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow modules (whole pipelines, clusters) first: with two test processes
    (``scripts/dev.sh test``), a long module started last would run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder that every test process of the run shares: the first to get here builds
    it with ``build(folder)``, the others wait on a file lock and reuse it. Under
    pytest-xdist each worker runs the session fixtures itself; what they build (a
    dataset, a trained run) is read-only to the tests, so it is built once."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder = base / f"shared-{name}"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".built").touch()
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_session_ray() -> None:
    """The session's local Ray: the jobs' local Ray with 2 CPUs, quiet."""
    import ray

    from genreflow.runtime import local_ray_options

    if not ray.is_initialized():
        ray.init(**local_ray_options(2), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session, 2 CPUs."""
    import ray

    start_session_ray()
    yield
    ray.shutdown()


@pytest.fixture
def small_manifest(tmp_path: Path) -> Path:
    """Eight short tones in four formats and two genres, as a generic manifest."""
    rows = []
    for i in range(8):
        genre = "low" if i % 2 == 0 else "high"
        suffix = [".wav", ".mp3", ".ogg", ".flac"][i % 4]
        freq = (220.0 if genre == "low" else 1760.0) * (1 + 0.05 * i)
        path = write_tone(tmp_path / "audio" / f"t{i}{suffix}", freq, duration_s=4.0, seed=i)
        rows.append(
            {
                "track_id": f"t{i}",
                "uri": str(path.relative_to(tmp_path)),
                "genre": genre,
                "artist_id": f"a{i % 4}",
                "valence": 0.1 * i,
                "lyrics": f"line one of {i}\nline two" if i % 3 else None,
            }
        )
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest
