"""A full disk mid-run: a one-line error, no partial checkpoint, and no MLflow run left RUNNING."""

import errno
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from automl.cli import main
from tests.conftest import SMOKE_SPEC, data_overrides


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_partial_file_and_a_one_line_error(synthetic_data, tmp_path, monkeypatch, capsys):
    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        f.write(b"\0" * 4096)  # part of the checkpoint reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", ["automl", "launch", "-e", str(SMOKE_SPEC), "--policy", "off", *data_overrides(synthetic_data), f"results_dir={tmp_path}", "train.num_epochs=1", "train.iters_per_epoch=1"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 1
    error = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line and not line.startswith("INFO")]
    assert len(error) == 1 and error[0].startswith("disk full: No space left on device")
    assert list((tmp_path / "train").iterdir()) == []  # neither a partial checkpoint nor a temporary file
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("synthetic_smoke").experiment_id])
    assert run.info.status == "FAILED"
