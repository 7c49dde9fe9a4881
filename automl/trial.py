"""What one sweep trial runs: the spec with the trial's values, trained by `run_training`, reported to Tune.

A trial whose resources hold one GPU or less trains in the trial process itself, which may have
run an earlier trial (Tune's `reuse_actors`). A trial of several GPUs builds a Ray Train
`TorchTrainer` whose workers run the same Lightning training with Ray's DDP strategy; their
reports reach Tune through Ray's Tune-report callback.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import pyarrow.fs
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from ray import tune

from automl.files import copy_file
from automl.packing import keep_to_share
from automl.shared_data import SharedData
from automl.spec.load import apply_values
from automl.training import run_training
from automl.trial_timing import TrialTiming
from model.errors import NonFiniteLossError

log = logging.getLogger(__name__)
# The file in each checkpoint a trial reports to Tune: the model at that validation (Tune keeps them
# by score and recency; the sweep picks the winner's best among them).
CHECKPOINT_FILE = "model_at_validation.pth"
# Keys reported to Tune besides the validation metrics.
STATUS_KEY = "trial_status"
# The folder in a multi-GPU trial's folder where Ray Train keeps its run (and the checkpoints its workers report).
RAY_TRAIN_DIR = "ray_train"


def trial_spec(base: dict, values: dict[str, Any], trial_dir: Path, max_epochs: int, cpus: float) -> DictConfig:
    """The base spec with the trial's sampled values, its own output folder and epoch budget.

    cpus: the CPUs Ray holds for this trial's process; its data loaders get at most one worker
    process per CPU beyond the training process's own, so that trials packed on one machine
    do not run more processes than the cores Ray counted for them.
    """
    spec = apply_values(base, {**values, "train.num_epochs": max_epochs, "train.results_dir": str(trial_dir)})
    spec.train.resume_training_checkpoint_path = ""
    for split in ("train", "val"):
        loader = spec.dataset[split]
        loader.num_workers = min(loader.num_workers, max(int(cpus) - 1, 0))
    return spec


def run_trial(
    config: dict,
    base_spec: dict,
    max_epochs: int,
    metric: str,
    timeout_minutes: float,
    experiment: tuple[pyarrow.fs.FileSystem | None, str],
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    data: SharedData | None = None,
    packed: bool = False,
) -> None:
    """The Tune function trainable.

    workers == 1: Lightning in this process (one GPU, a slice of one, or CPUs). workers > 1: a
    Ray Train `TorchTrainer` of that many workers (one GPU each, or CPU processes with gloo when
    the machine has no GPU) running the same training with Ray's DDP strategy. experiment: the
    sweep's (storage filesystem, experiment path) as Tune is given them, where a multi-worker
    trial's workers write their checkpoints. data: the sweep's decoded label map and annotations
    (from Ray's object store), which the trial reuses. packed: the GPU share was measured
    (`{gpu: auto}`): the trial keeps to it (`keep_to_share`).
    """
    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())  # the trial's local folder, which Tune syncs to the sweep's storage
    cpus = cpus_per_worker if workers > 1 else context.get_trial_resources().required_resources.get("CPU", 1.0)
    spec = trial_spec(base_spec, config, trial_dir, max_epochs, cpus)
    if workers > 1:
        filesystem, path = experiment
        storage = f"{path}/{trial_dir.name}/{RAY_TRAIN_DIR}"
        _fit_with_ray_train(spec, metric, timeout_minutes, workers, context.get_trial_name(), filesystem, storage, cpus_per_worker)
        return
    _release_earlier_trial()
    if packed:
        keep_to_share(context.get_trial_resources().required_resources.get("GPU", 1.0))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry after a crash, or a PBT exploit: continue from there
        spec.train.resume_training_checkpoint_path = _local_copy(checkpoint, trial_dir)
    _train(spec, metric, timeout_minutes, tune.report, data=data)


def _release_earlier_trial() -> None:
    """Free what an earlier trial in this process left: its model, loaders and optimiser (cycles
    that only a collection frees) and the GPU blocks PyTorch kept cached for it, so that this trial
    has the memory its GPU share was sized for. Done here rather than as that trial ended: one the
    scheduler stopped ends by an exception whose traceback holds its frames until its thread is gone."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train(spec: DictConfig, metric: str, timeout_minutes: float, report: Callable[..., None], **training_args: Any) -> None:
    watchdog, timing = Watchdog(timeout_minutes), TrialTiming()
    try:
        run_training(spec, callbacks=[TuneReport(metric, timing.wrap(report)), watchdog, timing], progress=False, keep_checkpoints=False, **training_args)
    except NonFiniteLossError as err:
        # Recorded and stopped; the sweep goes on (a retry would only diverge again).
        log.warning("trial stopped: %s", err)
        report({metric: float("nan"), STATUS_KEY: "nan_loss"})
    finally:
        watchdog.stop()


def _local_copy(checkpoint: tune.Checkpoint, trial_dir: Path) -> str:
    local = trial_dir / "restored.pth"
    with checkpoint.as_directory() as directory:
        copy_file(Path(directory) / CHECKPOINT_FILE, local)
    return str(local)


def _fit_with_ray_train(
    spec: DictConfig, metric: str, timeout_minutes: float, workers: int, name: str,
    filesystem: pyarrow.fs.FileSystem | None, storage: str, cpus_per_worker: float,
) -> None:
    """One trial as a Ray Train run; its workers' reports reach Tune through Ray's Tune-report callback.

    Its workers write their checkpoints to `storage` (the trial's folder in the sweep's storage) directly: under the
    trial's own folder they would be staged in the Ray session's folder on the machine that ran the trial and stay
    there, a copy of every checkpoint the run kept, after the sweep."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = torch.cuda.is_available()
    trainer = TorchTrainer(
        _ray_train_worker,
        train_loop_config={"spec": OmegaConf.to_container(spec, resolve=True), "metric": metric, "timeout_minutes": timeout_minutes},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=int(spec.automl.max_failures)),
            # Every checkpoint stays while the sweep runs, as the sweep's own (the sweep prunes them at its end).
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _ray_train_worker(config: dict) -> None:
    """What each Ray Train worker runs: the trial's training under Ray's DDP strategy and environment."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    spec = apply_values(config["spec"], {})
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # Ray Train restarted the workers after a failure
        spec.train.resume_training_checkpoint_path = _local_copy(checkpoint, Path(spec.train.results_dir) / f"rank{ray.train.get_context().get_world_rank()}")
    _train(
        spec, config["metric"], config["timeout_minutes"], ray.train.report,
        strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], devices="auto", accelerator="auto",
    )


class TuneReport(Callback):
    """After every validation: the metrics to Tune, with the checkpoint of the model at that validation.

    `report` is `ray.tune.report` in a trial process, or `ray.train.report` in the workers of a
    multi-GPU trial (every worker reports; the first one's checkpoint is kept).
    """

    def __init__(self, metric: str, report: Callable[..., None] = tune.report):
        self.metric, self.report = metric, report
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
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)  # every rank calls it; rank 0 writes
            checkpoint = tune.Checkpoint.from_directory(directory) if trainer.is_global_zero else None
            self.report(metrics, checkpoint=checkpoint)


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

