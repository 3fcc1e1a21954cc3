"""The README, run the way a user types it.

The shell blocks marked ``<!-- readme-test: NAME -->`` run verbatim, one command at a
time, in a fresh working directory with this virtual environment's ``bin`` first on
PATH (what ``source .venv/bin/activate`` gives a user) and no ``RAY_ADDRESS``: relative
paths, default arguments and all. The set-up command ``bash scripts/dev.sh demo`` ends
by running ``genreflow demo`` with its default arguments, and so does this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from genreflow.formats.index import list_versions, open_index
from tests.faults import kill_at, kill_when

REPO = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```bash\n(.*?)```", re.S)
PLACEHOLDER = re.compile(r"\.\.\.|<[a-z][\w-]*>|checkpoint_X|my-bucket")

pytestmark = pytest.mark.slow


def readme_blocks(text: str) -> dict[str, list[str]]:
    """The marked blocks of ``text``: name -> commands (``\\``-continued lines joined)."""
    blocks: dict[str, list[str]] = {}
    for name, body in MARKED.findall(text):
        commands, pending = [], ""
        for line in body.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
        blocks[name] = commands
    return blocks


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return (
            f"$ {self.command}\n-> {self.returncode} after {self.seconds:.0f} s\n"
            f"{self.stdout[-3000:]}{self.stderr[-4000:]}"
        )


def sh(command: str, cwd: Path, timeout: float = 900) -> Ran:
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Ran(command, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


BLOCKS = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_readme_opens_with_the_two_commands_and_its_blocks_are_runnable_text() -> None:
    first = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert first is not None
    assert [line.split("#")[0].strip() for line in first.group(1).splitlines()] == [
        "bash scripts/dev.sh demo",
        "bash scripts/dev.sh test",
    ]
    assert set(BLOCKS) == {"stages", "help"}
    for name, commands in BLOCKS.items():
        for command in commands:
            assert not PLACEHOLDER.search(command), f"{name}: a placeholder in {command!r}"
    stages = {c.split()[1] for c in BLOCKS["stages"]}
    assert stages == {"ingest", "train", "label", "index", "recommend", "analyze", "compare"}


@dataclass
class Journey:
    cwd: Path
    demo: Ran
    labelled_by_demo: list[int]  # tracks labelled per label run, right after the demo
    stages: list[Ran]
    compare_killed: bool  # the compare command, SIGKILLed once its first model finished
    kept_model: float  # that model's metrics.json mtime when the compare was killed
    first_index: str  # the index version the demo published
    again_killed: bool  # the demo's rerun, SIGKILLed just before it published its index
    served_while_killed: str  # the index version readers were served after that kill
    versions_while_killed: list[str]  # the index folder's versions after that kill
    again: Ran


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Journey:
    """The demo with its defaults, then the README's stage commands, in one fresh folder;
    then the demo once more into the folder it made. Two commands are killed once first
    (SIGKILL of the process group) and then run as typed: the compare, after its first
    model finished, and the demo's rerun, just before it publishes its new index."""
    import ray

    ray.shutdown()  # the commands start their own local Ray; the session's would share CPUs
    cwd = tmp_path_factory.mktemp("a user's folder")
    demo = sh("genreflow demo", cwd)
    runs = (cwd / "genreflow-demo" / "labels").glob("run-*/_run.json")
    labelled_by_demo = [json.loads(r.read_text())["labelled"] for r in runs]
    index = cwd / "genreflow-demo" / "index"
    first_index = open_index(str(index)).info["version"] if demo.returncode == 0 else ""
    stages = []
    compare_killed, kept_model = False, 0.0
    if demo.returncode == 0:
        for command in BLOCKS["stages"]:
            if command.startswith("genreflow compare"):
                first = cwd / "out" / "compare" / "runs" / "baseline_cnn" / "metrics.json"
                compare_killed = kill_when(
                    ["bash", "-c", command], first.exists, env=user_env(), cwd=cwd
                )
                kept_model = first.stat().st_mtime if first.exists() else 0.0
            stages.append(sh(command, cwd))
            if stages[-1].returncode != 0:
                break
    again_killed = kill_at(["bash", "-c", "genreflow demo"], "index:before-publish",
                           cwd / "stopped", env=user_env(), cwd=cwd)  # fmt: skip
    served = open_index(str(index)).info["version"] if (index / "index.json").exists() else ""
    versions = list_versions(str(index)) if index.exists() else []
    again = sh("genreflow demo", cwd)
    from tests.conftest import start_session_ray

    start_session_ray()
    for ran in [demo, *stages, again]:
        print(f"{ran.seconds:6.1f} s  {ran.command}")  # shown with -s, or on failure
    return Journey(
        cwd, demo, labelled_by_demo, stages, compare_killed, kept_model, first_index,
        again_killed, served, versions, again,
    )  # fmt: skip


def test_the_demo_runs_the_whole_pipeline_with_its_defaults(journey: Journey) -> None:
    demo, work = journey.demo, journey.cwd / "genreflow-demo"
    assert demo.returncode == 0, demo.explain()
    out = demo.stdout
    assert "[6/6]" in out and "validation accuracy" in out and "signature moments" in out
    assert "like " in out and "nearest" in out
    report = work / "report" / "report.html"
    assert f"open the report: {report}" in out
    # a local run prints genreflow's progress, not Ray's internals
    everything = out + demo.stderr
    for noise in (
        "State API may be temporarily unavailable",
        "token authentication",
        "Traceback",
    ):
        assert noise not in everything, noise
    manifest = json.loads((work / "dataset" / "_dataset.json").read_text())
    assert manifest["counts"]["rows"] == 6 * 16
    assert manifest["counts"]["with_lyrics"] > 0
    assert set(manifest["counts"]["by_split"]) == {"train", "val", "test"}
    formats = {p.suffix for p in (work / "catalog").rglob("*.*") if p.suffix in (".mp3", ".ogg")}
    assert formats == {".mp3", ".ogg"}
    metrics = json.loads((work / "runs" / "signature_attention" / "metrics.json").read_text())
    # six genres: chance is 1/6; the tiny signature model must be far above it
    assert metrics["best_val"]["val_macro_f1"] > 0.5
    assert metrics["test"]["accuracy"] > 0.5
    assert metrics["epochs_run"] == 10
    assert journey.labelled_by_demo == [6 * 16]
    index = json.loads((work / "index" / "index.json").read_text())
    assert index["count"] == 6 * 16 and index["recall_at_10"] == 1.0
    page = report.read_text()
    for name in ("genre_pca_2d.png", "genre_pca_3d.png", "attention.png", "confusion.png"):
        assert f"src='{name}'" in page and (report.parent / name).is_file()
    # the report's accuracy is the test split's alone
    analysis = json.loads((report.parent / "analysis.json").read_text())
    assert analysis["test_tracks"] == manifest["counts"]["by_split"]["test"]


def test_a_rerun_of_the_demo_continues_and_keeps_what_finished(journey: Journey) -> None:
    """The rerun was killed once just before publishing its index: readers were served
    the first run's index meanwhile; the rerun as typed then finished and published."""
    again, work = journey.again, journey.cwd / "genreflow-demo"
    assert journey.again_killed
    assert journey.served_while_killed == journey.first_index
    (killed,) = set(journey.versions_while_killed) - {journey.first_index}
    assert again.returncode == 0, again.explain()
    published = open_index(str(work / "index"))
    assert published.info["version"] not in (journey.first_index, killed)
    assert killed not in list_versions(str(work / "index"))  # the orphan is removed
    assert published.count == 6 * 16
    assert "continuing the demo in" in again.stdout
    assert "kept the model trained earlier" in again.stdout
    assert "0 rows written" in again.stdout  # ingest had nothing left to do
    runs = list((work / "labels").glob("run-*/_run.json"))
    labelled = sorted(json.loads(r.read_text())["labelled"] for r in runs)
    assert labelled[-1] == sum(labelled) == 6 * 16  # reruns labelled nothing twice
    assert f"open the report: {work / 'report' / 'report.html'}" in again.stdout
    # other settings into the same folder: refused before anything changes (exit 2)
    before = sorted((p, p.stat().st_mtime_ns) for p in work.rglob("*") if p.is_file())
    for flags, changed in (("--tracks-per-genre 8", "demo catalog"), ("--epochs 3", "epochs")):
        other = sh(f"genreflow demo {flags}", journey.cwd, timeout=120)
        assert other.returncode == 2, other.explain()
        assert "other settings" in other.stderr and changed in other.stderr, other.explain()
    after = sorted((p, p.stat().st_mtime_ns) for p in work.rglob("*") if p.is_file())
    assert after == before


def test_the_readme_stage_commands_run_with_relative_paths(journey: Journey) -> None:
    assert journey.demo.returncode == 0, journey.demo.explain()
    assert len(journey.stages) == len(BLOCKS["stages"]), journey.stages[-1].explain()
    for ran in journey.stages:
        assert ran.returncode == 0, ran.explain()
    out = journey.cwd / "out"  # every relative --out landed in the user's folder
    dataset = json.loads((out / "dataset" / "_dataset.json").read_text())
    assert dataset["counts"]["rows"] == 6 * 16
    metrics = json.loads((out / "runs" / "sig1" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3
    assert Path(metrics["best_checkpoint"]).is_relative_to(out / "runs" / "sig1")
    labels = pd.read_parquet(out / "labels", columns=["track_id", "split"])
    assert len(labels) == 6 * 16 and set(labels["split"]) == {"train", "val", "test"}
    assert json.loads((out / "index" / "index.json").read_text())["count"] == 6 * 16
    by_id, by_audio = (r for r in journey.stages if r.command.startswith("genreflow recommend"))
    ranked = re.findall(r"^\s+\d+\. (\S+)\s+[-0-9.]+", by_id.stdout, re.M)
    assert len(ranked) == 5 and "jazz-003" not in ranked
    assert re.findall(r"^\s+\d+\. (\S+)\s+[-0-9.]+", by_audio.stdout, re.M)
    assert (out / "report" / "report.html").is_file()
    table = (out / "compare" / "comparison.md").read_text()
    assert "| baseline_cnn | ok |" in table and "| signature_attention | ok |" in table
    # the compare was killed once with baseline_cnn finished: the rerun kept that model
    assert journey.compare_killed
    kept = out / "compare" / "runs" / "baseline_cnn" / "metrics.json"
    assert kept.stat().st_mtime == journey.kept_model
    assert table.count("| baseline_cnn |") == table.count("| signature_attention |") == 1


def test_every_help_runs() -> None:
    from genreflow.cli import COMMANDS

    for command in [*BLOCKS["help"], *(f"genreflow {name} --help" for name in COMMANDS)]:
        ran = sh(command, REPO, timeout=120)
        assert ran.returncode == 0, ran.explain()
        assert ran.stdout.startswith("usage: genreflow"), ran.explain()


def test_the_documented_submit_lines_are_the_ones_the_suite_submits() -> None:
    """docs/cluster.md lists each configs/*.yaml's first line, which
    tests/cluster/test_multinode.py submits to a real cluster: the two must not drift."""
    docs = (REPO / "docs" / "cluster.md").read_text(encoding="utf-8")
    prefix = "ray job submit --working-dir . -- python jobs/"
    documented = [line for line in docs.splitlines() if line.startswith(prefix)]
    shipped = [
        p.read_text(encoding="utf-8").splitlines()[0].removeprefix("# ")
        for p in sorted((REPO / "configs").glob("*.yaml"))
    ]
    assert sorted(documented) == sorted(shipped)
    assert all(line.startswith(prefix) for line in shipped)
