"""DDP on CPU (gloo, two processes): training runs, and validation sharded over both processes
gives exactly the metrics of a single-process evaluation of the same checkpoint."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from automl.actions.evaluate import evaluate_checkpoint
from tests.conftest import SMOKE_SPEC, data_overrides


def test_two_process_ddp_training_and_its_merged_validation_metrics(synthetic_data, smoke_spec, tmp_path):
    results = tmp_path / "results"
    overrides = [*data_overrides(synthetic_data), f"results_dir={results}", "train.num_gpus=2", "train.num_epochs=2", "train.validation_interval=2"]
    run = subprocess.run(
        [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), "--policy", "off", *overrides], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    [logged] = client.search_runs([client.get_experiment_by_name("synthetic_smoke").experiment_id])
    assert logged.info.status == "FINISHED"
    # 18 training images, batch 4 per process, 2 processes: 3 steps an epoch, validated after 2 epochs.
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val/mIoU")] == [6]

    single = evaluate_checkpoint(smoke_spec(), "latest")  # one process scores all 6 validation images
    for key in ("PQ", "mIoU", "AP", "pACC"):
        assert logged.data.metrics[f"val/{key}"] == pytest.approx(single[key], abs=1e-4), key


def test_fsdp_on_a_machine_without_gpus_is_a_user_error_naming_the_key(smoke_spec, monkeypatch):
    import torch

    from automl.training import trainer_settings
    from model.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^train.distributed_strategy: fsdp needs GPUs"):
        trainer_settings(smoke_spec("train.num_gpus=2", "train.distributed_strategy=fsdp"))
    assert trainer_settings(smoke_spec("train.num_gpus=2"))["strategy"] == "ddp"
