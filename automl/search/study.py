"""The sweep's Optuna study on disk: `<results_dir>/automl/<sweep>.optuna.journal`.

Optuna's journal storage (an append-only file, safe for one writer without a database) keeps
every trial's values and score after the sweep: a resumed sweep continues the same study, and a
later sweep warm-starts from it (`automl.warm_start: <previous results_dir>`), trying the previous
sweep's best configurations first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from model.errors import UserError

log = logging.getLogger(__name__)
STUDY_SUFFIX = ".optuna.journal"
# A warm start tries this many of the previous sweep's best configurations first.
WARM_START_TRIALS = 3


def study_file(sweep_root: str | Path, name: str) -> Path:
    """The journal of sweep `name` (its Ray experiment is `<sweep_root>/<name>`)."""
    return Path(sweep_root) / f"{name}{STUDY_SUFFIX}"


def study_storage(path: str | Path) -> JournalStorage:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def warm_start_points(previous_results_dir: str | Path, mode: str, top: int = WARM_START_TRIALS) -> list[dict[str, Any]]:
    """The best `top` configurations of the sweep under `previous_results_dir`, in Optuna's own
    coordinates (what the searcher enqueues); a key the new space does not search is ignored."""
    root = Path(previous_results_dir) / "automl"
    journals = sorted(root.glob(f"*{STUDY_SUFFIX}"))
    if not journals:
        raise UserError(f"automl.warm_start: no sweep study (*{STUDY_SUFFIX}) under {root}; expected the results_dir of an earlier sweep")
    trials = []
    for journal in journals:
        storage = study_storage(journal)
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            trials += [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None]
    if not trials:
        raise UserError(f"automl.warm_start: the sweep under {root} has no completed trial to start from")
    trials.sort(key=lambda t: t.value, reverse=mode == "max")
    log.info("warm start: %d best of %d trials under %s", min(top, len(trials)), len(trials), root)
    return [dict(t.params) for t in trials[:top]]
