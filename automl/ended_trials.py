"""The ledger of a sweep's trials that ran to their end: what tells a finished trial from one a Ctrl-C or a kill stopped.

Neither a trial's status nor its last result tells it. At a Ctrl-C Tune's cleanup marks every
running trial TERMINATED in the results the sweep reads, as if it had ended; and a trial that ran
out just before a kill -9 may come back from the saved state without `done` in its last result
(Tune adds `done` to the result in memory, and may keep saving the form it cached before). Tune calls `on_trial_complete`
only for a trial that ran out or that the scheduler stopped, so `EndedTrials` appends each such
trial's id to a file, on disk before the Tune loop goes on. A failed trial needs no entry: its
error is saved with it (and a resumed sweep retries it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import tune

from automl.files import write_text


class EndedTrials(tune.Callback):
    """Appends the id of each trial that ends without an error (ran out, stopped by the scheduler) to `path`.

    Tune pickles it with the experiment and brings it back on --resume: it holds the path only.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trial.trial_id}\n")
            f.flush()
            os.fsync(f.fileno())  # a kill -9 right after the trial ended still finds it here


def start_ledger(path: Path) -> None:
    """An empty ledger for a new sweep (a file of the same name may remain from an earlier one)."""
    write_text(path, "")


def ended_trials(path: Path) -> set[str]:
    """The ids the ledger holds (none before the sweep's first trial ends). A line a kill cut short
    names no trial."""
    try:
        return set(Path(path).read_text().split())
    except FileNotFoundError:
        return set()
