"""`automl launch`: a sweep (`--policy on`) or one plain training run (`--policy off`), tracked in MLflow."""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from automl.tracking import MlflowCallback, Tracker, run_tags, spec_params
from automl.training import TrainResult, build_label_map, run_training, target_metric

console = Console()
HEADLINE = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "fwIoU", "pACC", "AP", "AP50", "AP75")


def train_once(
    spec: DictConfig, spec_path: str | os.PathLike | None, progress: bool = True, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """One Lightning run of the spec, logged as one MLflow run (params, per-validation metrics, checkpoints)."""
    if rank_zero_only.rank != 0:  # a DDP worker re-running the command: train only
        return run_training(spec, callbacks=callbacks, progress=False)
    tracker = Tracker.for_spec(spec, spec_path)
    tracker.end_interrupted_runs(spec.results_dir)
    run_id = tracker.start_run(spec.model_name or "train", params=spec_params(spec), tags={**run_tags(spec), "automl.policy": "off"})
    if spec_path:
        tracker.log_artifact(run_id, spec_path, "spec")
    try:
        result = run_training(spec, callbacks=[MlflowCallback(tracker, run_id, build_label_map(spec).names), *callbacks], progress=progress)
    except BaseException as err:
        # Best effort: on a full disk the store may not take it either; the next command on this
        # results_dir then marks the run KILLED (Tracker.end_interrupted_runs).
        with contextlib.suppress(Exception):
            tracker.end_run(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    for checkpoint in (result.best_checkpoint, result.latest_checkpoint):
        if checkpoint is not None and checkpoint.exists():
            tracker.log_artifact(run_id, checkpoint, "checkpoints")
    metric = target_metric(spec)
    if result.best_metrics:
        tracker.log_metrics(run_id, {f"best/{k}": v for k, v in result.best_metrics.items() if "/" not in k}, step=0)
    tracker.end_run(run_id)
    print_summary(result, metric, tracker.uri, run_id)
    return result


def print_summary(result: TrainResult, metric: str, uri: str, run_id: str) -> None:
    table = Table(title="Training finished", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("last", justify="right")
    table.add_column(f"best (by {metric})", justify="right")
    for key in HEADLINE:
        if key in result.metrics or key in result.best_metrics:
            table.add_row(key, _fmt(result.metrics.get(key)), _fmt(result.best_metrics.get(key)))
    console.print(table)
    console.print(f"best checkpoint:   {result.best_checkpoint}", highlight=False)
    console.print(f"latest checkpoint: {result.latest_checkpoint}", highlight=False)
    console.print(f"MLflow run {run_id} in {uri}", highlight=False)
    if uri.startswith("sqlite:"):
        console.print(f"compare runs:      mlflow ui --backend-store-uri {uri}", highlight=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"

