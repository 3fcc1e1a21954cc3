"""cluster/ and deploy/: the manifests parse, name jobs and configs that exist, and agree."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import genreflow
from genreflow.config import load_config
from tests.test_config import JOB_CONFIGS

REPO = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/genreflow/genreflow"
MANIFESTS = sorted((REPO / "cluster").glob("*.yaml")) + sorted((REPO / "deploy").rglob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kinds(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in MANIFESTS for d in docs(p) if d.get("kind") == kind]


def ray_jobs() -> list[tuple[str, dict[str, Any]]]:
    """Every RayJob spec: the RayJobs themselves and each RayCronJob's template."""
    found = [(f"{p.name}", d["spec"]) for p, d in kinds("RayJob")]
    found += [(f"{p.name}:{d['metadata']['name']}", d["spec"]["jobTemplate"])
              for p, d in kinds("RayCronJob")]  # fmt: skip
    return found


def images(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in images(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def test_every_manifest_parses() -> None:
    assert len(MANIFESTS) >= 8
    for path in MANIFESTS:
        assert docs(path), path


def test_every_entrypoint_runs_an_existing_job_with_a_valid_config() -> None:
    jobs = ray_jobs()
    scripts = {spec["entrypoint"].split()[1] for _, spec in jobs}
    assert {p.relative_to(REPO).as_posix() for p in (REPO / "jobs").glob("*.py")} <= scripts
    for where, spec in jobs:
        words = shlex.split(spec["entrypoint"])
        assert words[:2] == ["python", words[1]] and words[2] == "--config", where
        script, config = REPO / words[1], REPO / words[3]
        assert script.is_file() and config.is_file(), where
        # the overrides are keys of that job's config, with values of the right type
        load_config(JOB_CONFIGS[config.name], config, words[4:])


def test_jobs_target_the_cluster_and_use_the_project_image() -> None:
    (_, cluster), = kinds("RayCluster")  # fmt: skip
    name = cluster["metadata"]["name"]
    for where, spec in ray_jobs():
        assert spec["clusterSelector"] == {"ray.io/cluster": name}, where
        assert images(spec) == [f"{IMAGE}:{genreflow.__version__}-cpu"], where


def test_cluster_launcher_and_kuberay_have_the_same_shape() -> None:
    (aws,) = docs(REPO / "cluster" / "aws.yaml")
    (_, cluster), = kinds("RayCluster")  # fmt: skip
    tag = genreflow.__version__
    for image in images(aws) + images(cluster):
        assert re.fullmatch(rf"{re.escape(IMAGE)}:{re.escape(tag)}-(cpu|gpu)", image), image
    nodes = aws["available_node_types"]
    assert nodes[aws["head_node_type"]]["resources"]["CPU"] == 0
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    pairs = {"cpu-decode": "cpu_decode", "gpu": "gpu"}
    for group_name, node_name in pairs.items():
        group, node = groups[group_name], nodes[node_name]
        assert (group["minReplicas"], group["maxReplicas"]) == (
            node["min_workers"], node["max_workers"]
        )  # fmt: skip
        container = group["template"]["spec"]["containers"][0]
        requests = container["resources"]["requests"]
        assert float(requests["cpu"]) == node["resources"]["CPU"], group_name
        assert int(requests.get("nvidia.com/gpu", 0)) == node["resources"].get("GPU", 0)
        flavour = "gpu" if node["resources"].get("GPU") else "cpu"
        assert container["image"].endswith(f"-{flavour}")
        node_image = node.get("docker", {}).get("worker_image", aws["docker"]["worker_image"])
        assert node_image.endswith(f"-{flavour}"), node_name
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    assert cluster["spec"]["rayVersion"] == ray_version()


def ray_version() -> str:
    pins = (REPO / "scripts" / "constraints.txt").read_text()
    match = re.search(r"^ray==(\S+)", pins, re.M)
    assert match
    return match.group(1)


def pins() -> dict[str, str]:
    lines = (REPO / "scripts" / "constraints.txt").read_text().splitlines()
    found = [re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line) for line in lines]
    return {m.group(1).lower(): m.group(2) for m in found if m}


def test_the_image_pins_what_the_constraints_pin() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for base in re.findall(r"rayproject/ray:(\S+)", dockerfile):
        assert base.startswith(ray_version() + "-py311"), base
    assert "-c scripts/constraints.txt" in dockerfile
    assert f"{IMAGE}:{genreflow.__version__}-cpu" in dockerfile
    assert f"{IMAGE}:{genreflow.__version__}-gpu" in dockerfile
    for copied in re.findall(r"^COPY \S+ (\S+)/ ", dockerfile, re.M):
        assert (REPO / copied).is_dir(), copied


def test_each_image_flavour_pins_torch_and_faiss_as_the_constraints_do() -> None:
    """The CPU and GPU images install the constraints' torch (as the build for their
    CUDA, or none) and one FAISS package of the constraints' FAISS release, named by an
    extra of the package."""
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    pinned = pins()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert pinned["faiss-cpu"] == pinned["faiss-gpu"]  # one FAISS release on every image
    for flavour, cuda in (("cpu", None), ("gpu", "cu128")):
        image = re.search(rf"^ARG RAY_IMAGE_{flavour}=rayproject/ray:(\S+)$", dockerfile, re.M)
        stage = re.search(rf"^FROM \S+ AS base-{flavour}\n(.*?)\n\n", dockerfile, re.M | re.S)
        assert image and stage, flavour
        env = dict(re.findall(r"(\w+)=(\S+)", stage.group(1)))
        torch_version, _, build = env["TORCH_PIN"].removeprefix("torch==").partition("+")
        assert torch_version == pinned["torch"]
        assert build == (cuda or "cpu") and env["TORCH_INDEX"].endswith(f"/whl/{build}")
        assert image.group(1).endswith(cuda or "cpu")  # torch's CUDA is the image's
        (requirement,) = extras[env["FAISS_EXTRA"]]
        package = re.split(r"[<>=!~ ]", requirement)[0]
        assert package == f"faiss-{flavour}" and package in pinned


@pytest.mark.parametrize(
    ("name", "script", "must"),
    [
        ("genreflow-label-nightly", "jobs/label.py", "incremental=true"),
        ("genreflow-index-weekly", "jobs/build_index.py", "labels=s3://"),
    ],
)
def test_the_schedules(name: str, script: str, must: str) -> None:
    (cron,) = [d for _, d in kinds("RayCronJob") if d["metadata"]["name"] == name]
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5
    if name.endswith("nightly"):
        assert fields[2:] == ["*", "*", "*"]  # every day
    else:
        assert fields[2:4] == ["*", "*"] and fields[4] != "*"  # one day a week
    entrypoint = cron["spec"]["jobTemplate"]["entrypoint"]
    assert entrypoint.split()[1] == script and must in entrypoint
