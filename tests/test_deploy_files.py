"""Deployment files (docker/, cluster/, .dockerignore) checked offline: no Ray started, no network, no Docker."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import tomllib
import yaml

from xdray.config import load_config

REPO = Path(__file__).resolve().parents[1]
AWS = REPO / "cluster" / "aws-gpu.yaml"
RAYCLUSTER = REPO / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = REPO / "cluster" / "kuberay" / "rayjob.yaml"
DOCKERFILES = {"gpu": REPO / "docker" / "Dockerfile.gpu", "cpu": REPO / "docker" / "Dockerfile.cpu"}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pinned_ray_version() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==([\w.]+)", d.replace(" ", "")))]
    assert len(pins) == 1, f"pyproject.toml must pin ray exactly (ray[...]==X.Y.Z), got {deps}"
    return pins[0]


def test_pyproject_pins_the_installed_ray():
    assert pinned_ray_version() == ray.__version__


# --- Ray cluster launcher ------------------------------------------------------------------------------


def test_aws_cluster_config_validates_against_rays_schema():
    schema = json.loads(Path(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json").read_text())
    jsonschema.validate(_yaml(AWS), schema)


def test_aws_cluster_config_survives_the_launchers_own_checks():
    """What `ray up` does before it contacts AWS: fill defaults from the provider, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_yaml(AWS)))


def test_aws_cluster_uses_the_gpu_image_and_a_reachable_dashboard():
    cfg = _yaml(AWS)
    assert cfg["docker"]["image"].endswith("-gpu")
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    assert re.search(r"--dashboard-host[ =]0\.0\.0\.0", head)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    workers = [t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    assert workers and all(t.get("min_workers", 0) == 0 and t["max_workers"] <= cfg["max_workers"] for t in workers)
    assert "8265" in AWS.read_text() and "internet" in AWS.read_text()  # the security-group warning is there


# --- KubeRay -------------------------------------------------------------------------------------------


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (head_container,) = head["template"]["spec"]["containers"]
    assert head_container["resources"]["requests"] and head_container["resources"]["limits"]
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (worker,) = group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for container in (head_container, worker):
        assert container["image"].endswith("-gpu")
        assert any(e["name"] == "MLFLOW_TRACKING_URI" for e in container.get("env", []))


def test_kuberay_raycluster():
    doc = _yaml(RAYCLUSTER)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_runs_a_shipped_job_spec_on_the_same_cluster(monkeypatch):
    doc = _yaml(RAYJOB)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"] == _yaml(RAYCLUSTER)["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    assert spec["entrypoint"].startswith("xdray pipeline ")
    (job,) = re.findall(r"\bjobs/[\w.-]+\.ya?ml\b", spec["entrypoint"])
    assert (REPO / job).is_file()
    monkeypatch.chdir(REPO)
    overrides = re.findall(r"--set[ =](\S+)", spec["entrypoint"])
    cfg = load_config(REPO / job, overrides)
    assert cfg.ray.address == "auto"


# --- Docker --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_base_matches_the_pinned_ray_and_installs_the_package(flavour):
    text = DOCKERFILES[flavour].read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == f"rayproject/ray:{pinned_ray_version()}-py311-{flavour}"
    installs = [" ".join(line.split()) for line in re.findall(r"pip install[^\n]*", text)]
    assert any(re.search(r"pip install( --no-cache-dir)? \.( |$)", line) for line in installs), installs
    assert any("torch==" in line for line in installs)
    if flavour == "cpu":
        assert any("download.pytorch.org/whl/cpu" in line for line in installs)


def test_dockerignore_keeps_local_state_out_of_the_image():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "outputs", "data", ".git"} <= patterns
    # a bare `data` only matches ./data, so the xdray.data package still reaches the image
    assert "xdray" not in patterns and "**/data" not in patterns
