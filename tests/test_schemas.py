"""Every shipped cluster manifest validates against the schema of what reads it: the
KubeRay manifests against KubeRay v1.7.0's CRDs (``../shared/schemas/kuberay/``), the
Ray cluster launcher file against the schema inside the ``ray`` package.

Validation is strict, as ``kubectl apply --validate=strict`` is: an object whose schema
lists its properties accepts no others, so a misspelt key fails here rather than being
dropped by the API server.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
KUBERAY = REPO.parent / "shared" / "schemas" / "kuberay"
CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
KUBERAY_MANIFESTS = [
    REPO / "cluster" / "kuberay-raycluster.yaml",
    *(REPO / "deploy").rglob("*.yaml"),
]


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever it lists properties and
    does not keep unknown fields (``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    path = KUBERAY / CRDS[kind]
    if not path.is_file():
        if os.environ.get("CI"):  # CI lays shared/ beside the clone: missing is an error
            pytest.fail(f"KubeRay CRD schemas not found at {KUBERAY}")
        pytest.skip(f"KubeRay CRD schemas not found at {KUBERAY} (the project's shared/ folder)")
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
            # metadata is Kubernetes' ObjectMeta, which a CRD leaves open
            schema["properties"]["metadata"] = {"type": "object"}
            return strict(schema)  # type: ignore[no-any-return]
    raise AssertionError(f"{kind} CRD has no version {version!r}")


def kuberay_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in KUBERAY_MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in CRDS:
                meta = doc["metadata"]
                name = meta.get("name") or meta.get("generateName", "")
                found.append((f"{path.relative_to(REPO)}:{name}", doc))
    return found


def errors(document: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


@pytest.mark.parametrize(("where", "document"), kuberay_documents(), ids=lambda v: str(v)[:60])
def test_kuberay_manifests_validate_against_the_crds(where: str, document: dict[str, Any]) -> None:
    group, version = document["apiVersion"].split("/")
    assert group == "ray.io", where
    assert errors(document, crd_schema(document["kind"], version)) == [], where


def test_every_kind_of_kuberay_manifest_is_covered() -> None:
    assert {d["kind"] for _, d in kuberay_documents()} == set(CRDS)


def test_strict_validation_finds_a_misspelt_key() -> None:
    _, cluster = next((w, d) for w, d in kuberay_documents() if d["kind"] == "RayCluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}  # not rayStartParams
    found = errors(broken, crd_schema("RayCluster", "v1"))
    assert any("rayStartParam" in e for e in found), found


def test_the_cluster_launcher_file_validates_against_rays_schema() -> None:
    import ray.autoscaler

    schema_file = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_file.read_text())
    config = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    assert errors(config, schema) == []
    broken = {**config, "max_worker": 3}  # the launcher's schema refuses unknown top keys
    assert errors(broken, schema)
