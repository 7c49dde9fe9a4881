"""kill -9 of a plain training run, then the same command again: nothing finished is lost."""

import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from automl.training import LATEST_NAME
from model.checkpoint import read_checkpoint
from tests.conftest import SMOKE_SPEC, data_overrides


def launch(results, data, *overrides):
    command = [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), "--policy", "off", *data_overrides(data), f"results_dir={results}", *overrides]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_run_killed_in_epoch_1_is_marked_killed_and_the_rerun_moves_latest_to_the_newest_checkpoint(synthetic_data, tmp_path):
    first = launch(tmp_path, synthetic_data, "train.num_epochs=3")
    epoch_0 = tmp_path / "train" / "model_epoch_000_step_00005.pth"
    deadline = time.time() + 300
    while not epoch_0.exists():  # the atomic write makes the name appear only when complete
        assert time.time() < deadline and first.poll() is None, first.stdout.read() if first.poll() is not None else "timeout"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [killed] = client.search_runs([client.get_experiment_by_name("synthetic_smoke").experiment_id])
    assert killed.info.status == "RUNNING"  # nothing could end it

    second = launch(tmp_path, synthetic_data, "train.num_epochs=2")
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    runs = {r.info.run_id: r.info.status for r in client.search_runs([killed.info.experiment_id])}
    assert runs.pop(killed.info.run_id) == "KILLED"
    assert list(runs.values()) == ["FINISHED"]
    latest = tmp_path / "train" / f"{LATEST_NAME}.pth"
    assert latest.resolve().name == "model_epoch_001_step_00010.pth" and read_checkpoint(latest)["epoch"] == 1
    assert not list((tmp_path / "train").glob(f"{LATEST_NAME}-v*"))
