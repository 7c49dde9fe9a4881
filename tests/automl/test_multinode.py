"""A sweep on a real two-node Ray cluster (two raylets on 127.0.0.1): trials run on both nodes, their
checkpoints and results reach the driver through a shared automl.storage_uri, and --resume continues
from that storage.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import ray
import ray._private.ray_constants
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from tests.conftest import SMOKE_SPEC, data_overrides

TRIAL_ACTOR = "ImplicitFunc"  # the actor class Tune runs a function trainable in


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(monkeypatch):
    """A head and a worker node of one CPU each, on 127.0.0.1: two concurrent one-CPU trials need both nodes."""
    # Ray otherwise swaps 127.0.0.1 for the machine's address when connecting; these keep every Ray
    # process (this one, the raylets and workers it starts, the CLI's driver) on the loopback.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1", "dashboard_port": free_port()},
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def launch(cluster, data, results, storage, *args):
    overrides = [
        *data_overrides(data), f"results_dir={results}", f"automl.storage_uri={storage}", "automl.resources_per_trial={cpu: 1}",
        "automl.num_samples=3", "automl.max_concurrent=2", "automl.max_epochs=2", "train.iters_per_epoch=1", "train.validation_interval=1", "automl.grace_period=2",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), "--ray-address", cluster.address, *overrides, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def test_trials_spread_over_two_nodes_and_resume_from_shared_storage(two_nodes, synthetic_data, tmp_path):
    storage, results = tmp_path / "cluster_storage", tmp_path / "results"
    first = launch(two_nodes, synthetic_data, results, storage)
    deadline = time.monotonic() + 240
    while first.poll() is None and time.monotonic() < deadline and len({p.parent for p in storage.glob("synthetic_smoke/*/checkpoint_*")}) < 2:
        time.sleep(1)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C once two trials have a checkpoint
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 130, output

    second = launch(two_nodes, synthetic_data, results, storage, "--resume")
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output

    actors = list_actors(address=f"http://{two_nodes.webui_url}", filters=[("class_name", "=", TRIAL_ACTOR)], limit=1000, raise_on_missing_output=False)
    nodes = {node.node_id for node in [two_nodes.head_node, *two_nodes.worker_nodes]}
    assert {actor.node_id for actor in actors} == nodes  # trials ran on both nodes

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic_smoke").experiment_id
    [parent] = client.search_runs([experiment], "tags.`automl.policy` = 'on'")
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert all(client.get_metric_history(r.info.run_id, "PQ") for r in runs)
    assert len(list(storage.glob("synthetic_smoke/*/result.json"))) == 3  # every trial's results in the shared storage
    assert (results / "best" / "mask2former_model_best.pth").exists()  # the winner reached the driver
