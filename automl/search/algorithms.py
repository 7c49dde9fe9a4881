"""Ray Tune search algorithms and trial schedulers for `automl.algorithm` and `automl.scheduler`.

Every algorithm but PBT is an Optuna sampler behind Tune's `OptunaSearch`, which calls the
space's define-by-run `SearchSpace.sample` for each trial; PBT has no searcher: Tune draws the
population from `SearchSpace.tune_domains()` and the PBT scheduler mutates it. Trials report once
per validation, so `max_t` and `grace_period` count validations (`training_iteration`).

Metric and mode are given here, to the searcher and to the scheduler: leave them out of
`TuneConfig`, which Tune refuses for a scheduler that already has them.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import optuna
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical

from automl.search.parameter import is_architecture
from automl.search.space import SearchSpace
from model.errors import UserError

log = logging.getLogger(__name__)

ALGORITHMS = ("tpe", "random", "grid", "gp", "cmaes", "bohb", "pbt")
SCHEDULERS = ("asha", "hyperband", "median", "pbt", "fifo")
# BOHB is Bayesian search plus bandit-style early stopping: it needs one of these schedulers.
BOHB_SCHEDULERS = ("hyperband", "asha")
# These pause trials and resume them later from their checkpoints (the others only stop them).
RESUMING_SCHEDULERS = ("hyperband", "pbt")
# Optuna's grid sampler lists every combination up front; past this a grid search is a mistake.
MAX_GRID_SIZE = 10_000


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell use, as `OptunaSearch` drives it.

    Optuna's stops the study after the last grid point, which raises outside `Study.optimize`
    (optuna issue #5141); here Tune's `num_samples` decides when the sweep ends.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def check_combination(algorithm: str, scheduler: str) -> None:
    """Refuse an `automl.algorithm` / `automl.scheduler` pair that cannot run together."""
    _check_name("automl.algorithm", algorithm, ALGORITHMS)
    _check_name("automl.scheduler", scheduler, SCHEDULERS)
    if (algorithm == "pbt") != (scheduler == "pbt"):
        raise UserError(
            f"automl.algorithm '{algorithm}' with automl.scheduler '{scheduler}': population-based training both "
            "chooses and schedules trials (Tune runs no search algorithm beside it); set both to 'pbt', or neither"
        )
    if algorithm == "bohb" and scheduler not in BOHB_SCHEDULERS:
        raise UserError(
            f"automl.scheduler '{scheduler}': automl.algorithm 'bohb' stops weak trials early, so it needs "
            f"automl.scheduler {' or '.join(BOHB_SCHEDULERS)}"
        )


def build_searcher(
    space: SearchSpace,
    algorithm: str,
    metric: str,
    mode: str = "max",
    seed: int | None = None,
    max_concurrent: int = 0,
    storage: optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    points_to_evaluate: list[dict] | None = None,
) -> Searcher | SearchAlgorithm:
    """The Tune search algorithm for `automl.algorithm`.

    tpe, random, gp, cmaes, bohb (TPE; pair it with a hyperband or asha scheduler) and grid are
    Optuna samplers seeded with `seed` behind `OptunaSearch`, limited to `max_concurrent` running
    trials when > 0, keeping the study in `storage` (in memory when None) under `study_name`, and
    trying `points_to_evaluate` (values in Optuna's coordinates, e.g. an earlier study's params)
    first. grid walks `space.grid()` in a seeded shuffled order: set num_samples to
    `space.grid_size()` (more trials repeat grid points). pbt returns Tune's own random generator;
    pass `space.tune_domains()` as the Tuner's param_space.
    """
    _check_name("automl.algorithm", algorithm, ALGORITHMS)
    if algorithm == "pbt":
        if points_to_evaluate:
            raise UserError("automl.warm_start: population-based training has no Optuna study to start from earlier trials")
        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)
    searcher = OptunaSearch(
        space=space.sample, metric=metric, mode=mode, sampler=_optuna_sampler(space, algorithm, seed),
        storage=storage, study_name=study_name, points_to_evaluate=points_to_evaluate,
    )  # fmt: skip
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent > 0 else searcher


def _optuna_sampler(space: SearchSpace, algorithm: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if algorithm in ("tpe", "bohb"):
        return optuna.samplers.TPESampler(seed=seed)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "gp":
        # Conditional parameters (and ranges that start at another's value) fall back to random draws.
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if algorithm == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise UserError("automl.algorithm 'cmaes' needs the cmaes package: pip install cmaes")
        # CMA-ES models numbers only: categorical parameters are drawn by its independent (random) sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # grid: the points of space.grid(), in the coordinates Parameter.suggest asks Optuna for
    size = space.grid_size()
    if size > MAX_GRID_SIZE:
        raise UserError(
            f"{space.source}: a grid search over this space has {size} combinations (at most {MAX_GRID_SIZE}); "
            "give fewer parameters or explicit values, or choose another automl.algorithm"
        )
    grid = space.grid()
    return AskTellGridSampler({p.key: [p.encode(v) for v in grid[p.key]] for p in space}, seed=seed)


def build_scheduler(
    name: str,
    metric: str,
    mode: str,
    max_t: int,
    grace_period: int = 1,
    reduction_factor: int = 3,
    space: SearchSpace | None = None,
) -> TrialScheduler:
    """The Tune trial scheduler for `automl.scheduler`; times count validations (`training_iteration`).

    asha and hyperband stop weak trials at rungs up to `max_t` (asha from `grace_period`); median
    stops a trial below the running median after `grace_period`; pbt perturbs the space's
    non-architecture parameters every `grace_period` validations (it needs `space`, and trials
    that checkpoint); fifo runs every trial to the end.
    """
    _check_name("automl.scheduler", name, SCHEDULERS)
    if name in ("asha", "median") and grace_period > max_t:
        raise UserError(f"automl.grace_period: {grace_period} validations is longer than a whole trial ({max_t}); lower it or lengthen the trials")
    timing = {"time_attr": "training_iteration", "metric": metric, "mode": mode}
    if name == "asha":
        return ASHAScheduler(**timing, max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)
    if name == "hyperband":
        return HyperBandScheduler(**timing, max_t=max_t, reduction_factor=reduction_factor)
    if name == "median":
        return MedianStoppingRule(**timing, grace_period=grace_period)
    if name == "pbt":
        if space is None:
            raise ValueError("the pbt scheduler needs the search space")
        return FinalReportPBT(
            max_t, **timing, perturbation_interval=grace_period, hyperparam_mutations=pbt_mutations(space), custom_explore_fn=space.clip
        )
    return FIFOScheduler()


class FinalReportPBT(PopulationBasedTraining):
    """Tune's PBT, except at a trial's last report (`max_t`): there an exploit would restart the
    trial on the donor's weights with no epoch left to train, and the donor, which ends with that
    report, may already be gone. The trial ends as it is."""

    def __init__(self, max_t: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_t = max_t

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def pbt_mutations(space: SearchSpace) -> dict:
    """PBT's `hyperparam_mutations`: the space's Tune domains, choices as lists, architecture left out.

    Choices and powers are lists, which PBT shifts to a neighbouring value (it would multiply a
    domain's value by 0.8 or 1.2, which a string cannot take); `SearchSpace.clip` brings the
    multiplied numbers back into range.
    """
    mutations = {}
    for key, domain in space.tune_domains().items():
        if is_architecture(key, space[key].kind):  # a PBT clone takes its donor's architecture with the weights
            continue
        mutations[key] = list(domain.categories) if isinstance(domain, Categorical) else domain
    if not mutations:
        raise UserError(
            f"{space.source}: PBT changes parameters of running trials, but every key here sets the network's "
            f"shape ({', '.join(space.keys)}); add a training parameter such as train.optim.lr"
        )
    fixed = [key for key in space.keys if key not in mutations]
    if fixed:
        log.info("PBT keeps %s as drawn for each trial (they set the network's shape)", ", ".join(fixed))
    return mutations


def _check_name(setting: str, name: str, known: tuple[str, ...]) -> None:
    if name not in known:
        raise UserError(f"{setting}: unknown '{name}'; expected one of {', '.join(known)}")
