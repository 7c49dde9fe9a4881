"""Where a trial's time goes: setup to the first training step, training steps, validation,
checkpoint and report, reported to Tune with every validation (and so to MLflow).

The sweep driver adds the teardown (last report to the trial's end) and prints one line per
trial (automl.sweep_tracking). Overhead is everything but training and validation steps.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

# Seconds reported with every validation (totals so far); the driver adds TEARDOWN.
FIRST_STEP, TRAIN, VALIDATION, CHECKPOINT = "first_step_s", "train_s", "val_s", "checkpoint_s"
TEARDOWN = "teardown_s"
PHASES = (FIRST_STEP, TRAIN, VALIDATION, CHECKPOINT, TEARDOWN)


class TrialTiming(Callback):
    """Times a trial's phases; `wrap(report)` adds them to every report and times the report itself.

    first_step_s: from the trial's start (this object's creation, before data and model are
    built) to the first training step. train_s: inside training steps (forward, backward,
    optimiser; waiting for data is overhead). val_s: validation loops (sanity checks excluded).
    checkpoint_s: from a validation's end until its report (with its checkpoint) has gone to Tune.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.seconds = {FIRST_STEP: float("nan"), TRAIN: 0.0, VALIDATION: 0.0, CHECKPOINT: 0.0}
        self._mark: float | None = None  # start of the current step or validation
        self._validated: float | None = None  # end of the last validation

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._mark = time.monotonic()
        if self.seconds[FIRST_STEP] != self.seconds[FIRST_STEP]:
            self.seconds[FIRST_STEP] = self._mark - self.start

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._mark is not None:
            self.seconds[TRAIN] += time.monotonic() - self._mark

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._mark is not None:
            self._validated = time.monotonic()
            self.seconds[VALIDATION] += self._validated - self._mark

    def wrap(self, report: Callable[..., None]) -> Callable[..., None]:
        """`report` with the phase totals added to its metrics, its own time counted as checkpoint time."""

        def timed(metrics: dict, **kwargs: Any) -> None:
            now = time.monotonic()
            if self._validated is not None:  # saving the checkpoint since the validation
                self.seconds[CHECKPOINT] += now - self._validated
                self._validated = None
            report({**metrics, **self.seconds}, **kwargs)
            self.seconds[CHECKPOINT] += time.monotonic() - now

        return timed


def overhead_line(label: str, seconds: dict[str, float], wall: float) -> str:
    """'t03: first step 12.1 s, train 30.2 s, validation 5.1 s, checkpoint 1.2 s, teardown 2.0 s; overhead 28% of 50.6 s'."""
    names = {FIRST_STEP: "first step", TRAIN: "train", VALIDATION: "validation", CHECKPOINT: "checkpoint", TEARDOWN: "teardown"}
    parts = ", ".join(f"{names[k]} {seconds[k]:.1f} s" for k in PHASES if k in seconds and seconds[k] == seconds[k])
    work = seconds.get(TRAIN, 0.0) + seconds.get(VALIDATION, 0.0)
    share = f"; overhead {100 * (1 - work / wall):.0f}% of {wall:.1f} s" if wall > 0 else ""
    return f"{label}: {parts}{share}"
