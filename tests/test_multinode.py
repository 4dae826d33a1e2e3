"""A simulated two-node cluster (`ray.cluster_utils.Cluster`: two raylets on this machine). Labelling and
distillation must put work on both nodes: each node has 3 CPUs and each actor / worker asks for 2. Latency is
measured where the device is: a custom resource stands in for it, held by the worker node and absent from the
head, where the driver runs; the search's latency figures must come from the worker node."""

from __future__ import annotations

import json

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from xdray.cli import main

from .conftest import tiny_config

pytestmark = pytest.mark.slow
DEVICE = "latency_device"


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": True})
    cluster.add_node(num_cpus=3, resources={DEVICE: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_label_and_distill_use_both_nodes(two_nodes, tiny_task, tmp_path, monkeypatch):
    # Ray Data starts a pool's actors asynchronously: on the tiny corpus the first actor up can label every chunk
    # before the second is placed (a flake seen in CI). Waiting for the whole pool makes placement the only variable.
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 120)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_config(
        tiny_task, tmp_path / "out",
        label={"actors": 2, "cpus_per_actor": 2, "batch_size": 16},
        distill={"workers": 2, "cpus_per_worker": 2},
        search={"space": {"layers": [1], "hidden": [16], "heads": [2]}, "num_samples": 1, "points_to_evaluate": [],
                "latency": {"sentences": 8, "batch_sizes": [1], "resources": {DEVICE: 1}}},
    )))
    for step in ("teacher", "label", "distill", "search"):
        assert main([step, str(job)]) == 0

    actors = list_actors(filters=[("class_name", "=", "MapWorker(MapBatches(ChunkLabeler))")], limit=100)
    assert len(actors) == 2 and {a.node_id for a in actors} == nodes
    summary = json.loads((tmp_path / "out" / "distill" / "summary.json").read_text())
    assert set(summary["worker_nodes"]) == nodes
    assert summary["test_accuracy"] > 0.7

    device_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and DEVICE in n["Resources"])
    head_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and DEVICE not in n["Resources"])
    trials = json.loads((tmp_path / "out" / "search" / "summary.json").read_text())["trials"]
    measured = [t for t in trials if t["status"] == "completed"]
    assert measured and {t["latency_node"] for t in measured} == {device_node} != {head_node}
