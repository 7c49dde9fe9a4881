"""What one sweep trial runs: the spec with the trial's values, trained by `run_training`, reported to Tune.

A trial whose resources hold one GPU or less trains in the trial process itself. A trial of
several GPUs builds a Ray Train `TorchTrainer` whose workers run the same Lightning training
with Ray's DDP strategy; their reports reach Tune through Ray's Tune-report callback.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from ray import tune

from automl.spec.load import apply_values
from automl.training import LATEST_NAME, run_training
from model.lit import NonFiniteLossError

log = logging.getLogger(__name__)
CHECKPOINT_FILE = f"{LATEST_NAME}.pth"
# Keys reported to Tune besides the validation metrics.
STATUS_KEY = "trial_status"


def trial_spec(base: dict, values: dict[str, Any], trial_dir: Path, max_epochs: int) -> DictConfig:
    """The base spec with the trial's sampled values, its own output folder and epoch budget."""
    spec = apply_values(base, {**values, "train.num_epochs": max_epochs, "train.results_dir": str(trial_dir)})
    spec.train.resume_training_checkpoint_path = ""
    return spec


def run_trial(config: dict, base_spec: dict, max_epochs: int, metric: str, timeout_minutes: float) -> None:
    """The Tune function trainable (in-process Lightning; one GPU or a slice of one, or CPUs)."""
    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())  # <results_dir>/automl/<sweep>/<trial>
    spec = trial_spec(base_spec, config, trial_dir, max_epochs)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry after a crash, or a PBT exploit: continue from there
        with checkpoint.as_directory() as directory:
            local = trial_dir / "restored.pth"
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(directory) / CHECKPOINT_FILE, local)
        spec.train.resume_training_checkpoint_path = str(local)
    watchdog = Watchdog(timeout_minutes)
    try:
        run_training(spec, callbacks=[TuneReport(metric), watchdog], progress=False, keep_checkpoints=False)
    except NonFiniteLossError as err:
        # Recorded and stopped; the sweep goes on (a retry would only diverge again).
        log.warning("trial %s stopped: %s", context.get_trial_name(), err)
        tune.report({metric: float("nan"), STATUS_KEY: "nan_loss"})
    finally:
        watchdog.stop()


class TuneReport(Callback):
    """After every validation: the metrics to Tune, with a checkpoint Tune keeps (best and latest)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.pending: dict[str, float] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = getattr(pl_module, "validation_metrics", {})
            self.pending = {k: float(v) for k, v in metrics.items() if "/" not in k}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation ran inside this epoch; report now that the epoch is complete and savable.
        if self.pending is None:
            return
        metrics, self.pending = self.pending, None
        metrics.update(epoch=trainer.current_epoch + 1, step=trainer.global_step, train_loss=_scalar(trainer.callback_metrics.get("train/loss")))
        metrics.setdefault(self.metric, float("nan"))
        with tempfile.TemporaryDirectory() as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


class Watchdog(Callback):
    """Ends the trial's process when training makes no progress for `minutes` (e.g. a DDP deadlock).

    The process exits with an error, so Tune records the trial as failed and may retry it.
    """

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self.last_progress = time.monotonic()
        self.stopped = threading.Event()
        if self.seconds > 0:
            threading.Thread(target=self._watch, daemon=True, name="trial-watchdog").start()

    def on_train_batch_end(self, *args: Any) -> None:
        self.last_progress = time.monotonic()

    def on_validation_batch_end(self, *args: Any) -> None:
        self.last_progress = time.monotonic()

    def stop(self) -> None:
        self.stopped.set()

    def _watch(self) -> None:
        while not self.stopped.wait(min(30.0, self.seconds / 4)):
            if time.monotonic() - self.last_progress > self.seconds:
                log.error("no training progress for %.1f minutes: ending the trial", self.seconds / 60)
                os._exit(3)


def _scalar(value: Any) -> float:
    return float(value) if value is not None else float("nan")

