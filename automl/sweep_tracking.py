"""The sweep in MLflow, written from the driver: one parent run, one child run per trial.

Every MLflow `step` is an optimiser step: a child's metrics are at its trial's global step, and
the parent's best-so-far at the optimiser steps the whole sweep has spent so far. Parameters are
params (never metrics); per-class values are JSON/HTML artifacts with class names.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID
from rich.console import Console

from automl.tracking import TRIAL_TAG, Tracker, headline, trial_run_name
from automl.trial import STATUS_KEY
from automl.trial_timing import PHASES, TEARDOWN, overhead_line

console = Console()
# Reported by every trial (automl.trial.TuneReport): its global optimiser step, MLflow's x-axis.
STEP_KEY = "step"
# Seconds of GPU held by a trial (its GPU share x wall time) and its wall time, logged per report.
GPU_SECONDS, WALL_SECONDS = "gpu_seconds", "wall_seconds"
# What Tune adds to every result, and what is not a score.
NOT_METRICS = frozenset(AUTO_RESULT_KEYS) | {DONE, SHOULD_CHECKPOINT, TRIAL_ID, EXPERIMENT_TAG, STEP_KEY, STATUS_KEY}
CONFIG_PREFIX = "config/"  # a flattened result's parameter columns


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a trial reported (scores, loss, epoch, timings): no Tune bookkeeping, no parameters."""
    return {
        k: float(v)
        for k, v in result.items()
        if k not in NOT_METRICS and not k.startswith(CONFIG_PREFIX) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def gpu_share(trial: Any, train_gpus: float) -> float:
    """GPUs a trial holds: its own Tune resources, or `train_gpus` for the Ray Train workers of a multi-GPU trial."""
    return max(float(trial.placement_group_factory.required_resources.get("GPU", 0.0)), train_gpus)


def log_baseline(tracker: Tracker, parent_id: str, metrics: Mapping[str, float], class_names: Mapping[int, str]) -> None:
    """The starting weights' scores as params of the parent (`baseline.PQ`), per class as an artifact."""
    tracker.log_params(parent_id, {f"baseline.{k}": round(v, 4) for k, v in headline(metrics).items() if math.isfinite(v)})
    tracker.log_per_class(parent_id, metrics, class_names, "baseline")


def log_winner(
    tracker: Tracker, parent_id: str, params: Mapping[str, Any], metrics: Mapping[str, float], final: Mapping[str, float] | None,
    class_names: Mapping[int, str],
) -> None:
    """The winner on the parent: its values as params (`best.<key>`), its best validation and the
    re-evaluation as metrics (`best/PQ`, `final/PQ`), the re-evaluation per class as an artifact."""
    tracker.log_params(parent_id, {f"best.{k}": v for k, v in params.items()})
    tracker.log_metrics(parent_id, {f"best/{k}": v for k, v in result_metrics(metrics).items()}, step=0)
    if final is not None:
        tracker.log_metrics(parent_id, {f"final/{k}": v for k, v in headline(final).items()}, step=0)
        tracker.log_per_class(parent_id, final, class_names, "final")


class MlflowSweepCallback(tune.Callback):
    """Writes the sweep into MLflow from the driver: child runs per trial, best-so-far on the parent.

    Tune pickles it with the experiment and restores it on --resume as it was when the sweep
    started; its state (the best value so far, each trial's optimiser steps, the child runs) is
    read back from MLflow on first use, so a resumed sweep continues where it stopped.
    """

    def __init__(
        self, tracker: Tracker, parent_id: str, metric: str, mode: str, base_tags: dict[str, str], validations: int, train_gpus: float = 0.0
    ):
        self._tracker: Tracker | None = tracker
        self.store = (tracker.uri, tracker.client.get_experiment(tracker.experiment_id).name)
        self.parent_id, self.metric, self.sign = parent_id, metric, 1.0 if mode == "max" else -1.0
        self.base_tags, self.validations, self.train_gpus = base_tags, validations, train_gpus
        self._clear()

    def _clear(self) -> None:
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self.steps: dict[str, int] = {}  # trial id -> its latest optimiser step
        self.best: float | None = None
        self.reported: dict[str, float] = {}  # trial id -> when its last report arrived (driver clock)
        self.last_line = ""
        self.synced = False

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(*self.store)
        if not self.synced:
            self.synced = True
            self._read_back()
        return self._tracker

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_tracker": None}
        state.update(runs={}, steps={}, best=None, reported={}, last_line="", synced=False)
        return state

    def _read_back(self) -> None:
        """The children already in MLflow (none for a new sweep): their runs, steps and the best value."""
        for run in self._tracker.children(self.parent_id):
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is None:
                continue
            self.runs[trial_id] = run.info.run_id
            history = self._tracker.client.get_metric_history(run.info.run_id, self.metric)
            self.steps[trial_id] = max((m.step for m in history), default=0)
            for m in history:
                self._improve(m.value)

    def _improve(self, value: Any) -> bool:
        if isinstance(value, (int, float)) and math.isfinite(value) and (self.best is None or self.sign * value > self.sign * self.best):
            self.best = float(value)
            return True
        return False

    def _run(self, trial: Any) -> str:
        tracker = self.tracker
        if trial.trial_id not in self.runs:
            tags = {**self.base_tags, TRIAL_TAG: trial.trial_id, "status": "running"}
            name = trial_run_name(len(self.runs) + 1, trial.config)  # numbered in start order, across a resume
            self.runs[trial.trial_id] = tracker.start_run(name, trial.config, tags, parent_id=self.parent_id)
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run(trial)
        self.reported[trial.trial_id] = time.monotonic()
        step = int(result.get(STEP_KEY, 0))
        self.steps[trial.trial_id] = step
        wall = float(result.get("time_total_s", 0.0))
        metrics = {**result_metrics(result), WALL_SECONDS: wall, GPU_SECONDS: gpu_share(trial, self.train_gpus) * wall}
        self.tracker.log_metrics(run_id, metrics, step=step)
        if self._improve(result.get(self.metric)):
            self.tracker.log_metrics(self.parent_id, {f"best_{self.metric}": self.best}, step=sum(self.steps.values()))
        if STATUS_KEY in result:
            self.tracker.set_tags(run_id, {"status": result[STATUS_KEY]})
        self._progress(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run(trial)
        reports = int((trial.last_result or {}).get("training_iteration", 0))
        if self.tracker.client.get_run(run_id).data.tags.get("status") == "running":
            self.tracker.set_tags(run_id, {"status": "finished" if reports >= self.validations else "stopped"})
        if trial.trial_id in self.reported and trial.last_result:
            self._log_overhead(run_id, trial)
        self.tracker.end_run(run_id, "FINISHED")
        self._progress(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.set_tags(self._run(trial), {"status": "error", "error": str(getattr(trial, "error_file", ""))})
        self.tracker.end_run(self._run(trial), "FAILED")
        self._progress(trials)

    def _log_overhead(self, run_id: str, trial: Any) -> None:
        """The teardown (last report to the trial's end) to MLflow; one line per trial on where its time went."""
        teardown = time.monotonic() - self.reported[trial.trial_id]
        step = int(trial.last_result.get(STEP_KEY, 0))
        self.tracker.log_metrics(run_id, {TEARDOWN: teardown}, step=step)
        seconds = {k: float(trial.last_result[k]) for k in PHASES if k in trial.last_result}
        seconds[TEARDOWN] = teardown
        name = self.tracker.client.get_run(run_id).info.run_name.split(" ", 1)[0]
        console.print(overhead_line(name, seconds, float(trial.last_result.get("time_total_s", 0.0)) + teardown), highlight=False, soft_wrap=True)

    def _progress(self, trials: list) -> None:
        states: dict[str, int] = {}
        for t in trials:
            states[t.status] = states.get(t.status, 0) + 1
        best = "-" if self.best is None else f"{self.best:.2f}"
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        line = f"[sweep] {summary} | best {self.metric} so far: {best}"
        if line != self.last_line:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
            self.last_line = line
