"""Searchers and schedulers: each name builds, proposes valid configs through Tune's OptunaSearch, and bad pairs are refused.

Nothing here starts Ray: the searchers are driven by hand with suggest / on_trial_complete.
"""

import importlib.util
import pickle

import optuna
import pytest
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from automl.search.algorithms import ALGORITHMS, SCHEDULERS, FinalReportPBT, build_scheduler, build_searcher, check_combination, pbt_mutations
from automl.search.space import resolve_search_space, space_from_mapping
from automl.spec.load import load_spec
from model.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = "train.optim.lr"
HIDDEN = "model.mask_former.hidden_dim"
FFN = "model.mask_former.dim_feedforward"
SCHEDULE = "train.optim.lr_scheduler"
GAMMA = "train.optim.gamma"
HAS_CMAES = importlib.util.find_spec("cmaes") is not None
OPTUNA_ALGORITHMS = [a for a in ALGORITHMS if a != "pbt"]


@pytest.fixture(scope="module")
def space():
    entries = {
        LR: {"min": 1e-5, "max": 1e-3},
        HIDDEN: {"min": 128, "max": 512},
        FFN: {"min": 256, "max": 2048},
        SCHEDULE: {},
        GAMMA: {},
        "dataset.augmentation.train_augmentation": {},
    }
    return space_from_mapping(entries, load_spec(None), "test space")


def run_trials(searcher, n, metric="PQ"):
    """Propose n configs, completing each with a made-up score, as Tune would."""
    configs = []
    for i in range(n):
        config = searcher.suggest(f"trial_{i}")
        configs.append(config)
        searcher.on_trial_complete(f"trial_{i}", {metric: config[LR] * 1e3, "training_iteration": 1})
    return configs


@pytest.mark.parametrize("algorithm", OPTUNA_ALGORITHMS)
def test_each_optuna_algorithm_proposes_valid_flat_configs(space, algorithm):
    if algorithm == "cmaes" and not HAS_CMAES:
        pytest.skip("the cmaes package is not installed")
    searcher = build_searcher(space, algorithm, metric="PQ", mode="max", seed=0)
    assert isinstance(searcher, OptunaSearch)
    for config in run_trials(searcher, 4):
        assert set(config) <= set(space.keys) and LR in config  # flat dotted keys only
        assert config[FFN] >= config[HIDDEN] and config[HIDDEN] % 8 == 0
        assert config[SCHEDULE] in ("MultiStep", "Warmuppoly", "Cosine")
        assert (GAMMA in config) == (config[SCHEDULE] == "MultiStep")
        load_spec(None, [f"{key}={value}" for key, value in config.items()])


@pytest.mark.filterwarnings("ignore:Define-by-run function")  # GP's model takes a second on a CPU
@pytest.mark.parametrize("algorithm", ["tpe", "gp"])
def test_model_based_algorithms_keep_configs_valid_past_their_random_start_up(space, algorithm):
    configs = run_trials(build_searcher(space, algorithm, metric="PQ", mode="max", seed=0), 12)  # 10 start-up trials
    assert all(config[FFN] >= config[HIDDEN] and config[HIDDEN] % 8 == 0 for config in configs[10:])


@pytest.mark.skipif(HAS_CMAES, reason="the cmaes package is installed")
def test_cmaes_without_its_package_is_a_clear_error(space):
    with pytest.raises(UserError, match="automl.algorithm 'cmaes' needs the cmaes package"):
        build_searcher(space, "cmaes", metric="PQ", mode="max", seed=0)


def test_grid_walks_every_combination_once_and_survives_the_end_of_the_grid():
    space = space_from_mapping(
        {LR: {"values": [1e-4, 1e-3]}, SCHEDULE: {"options": ["MultiStep", "Cosine"], "weights": [0.9, 0.1]}, HIDDEN: {"values": [128, 256]}},
        load_spec(None),
        "grid space",
    )
    assert space.grid_size() == 8
    configs = run_trials(build_searcher(space, "grid", metric="PQ", mode="max", seed=0), 9)  # one past the end
    seen = {(c[LR], c[SCHEDULE], c[HIDDEN]) for c in configs[:8]}
    assert seen == {(lr, s, h) for lr in (1e-4, 1e-3) for s in ("MultiStep", "Cosine") for h in (128, 256)}


def test_grid_too_large_to_list_is_refused():
    space = resolve_search_space(load_spec(None, ["automl.search_space=full"]))
    with pytest.raises(UserError, match=r"search_spaces/full.yaml: a grid search over this space has \d+ combinations"):
        build_searcher(space, "grid", metric="PQ", mode="max", seed=0)


def test_same_seed_same_proposals_through_tune(space):
    def proposals(seed):
        return run_trials(build_searcher(space, "tpe", metric="PQ", mode="max", seed=seed), 12)

    assert proposals(3) == proposals(3)
    assert proposals(3) != proposals(4)


def test_concurrency_limit_holds_back_proposals_until_a_trial_completes(space):
    searcher = build_searcher(space, "random", metric="PQ", mode="max", seed=0, max_concurrent=2)
    assert isinstance(searcher, ConcurrencyLimiter)
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", {"PQ": 0.5, "training_iteration": 1})
    assert searcher.suggest("c")


def test_searcher_state_pickles_for_resume(space):
    searcher = build_searcher(space, "tpe", metric="PQ", mode="max", seed=0, max_concurrent=2)
    run_trials(searcher, 3)
    restored = pickle.loads(pickle.dumps(searcher))
    assert restored.suggest("next")[LR] > 0


def test_pbt_draws_its_population_from_tune_domains(space):
    searcher = build_searcher(space, "pbt", metric="PQ", mode="max", seed=0, max_concurrent=4)
    assert isinstance(searcher, BasicVariantGenerator)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("asha", AsyncHyperBandScheduler),
        ("hyperband", HyperBandScheduler),
        ("median", MedianStoppingRule),
        ("pbt", FinalReportPBT),
        ("fifo", FIFOScheduler),
    ],
)
def test_each_scheduler_builds_on_validation_counts(space, name, kind):
    scheduler = build_scheduler(name, metric="PQ", mode="max", max_t=12, grace_period=2, reduction_factor=3, space=space)
    assert type(scheduler) is kind
    if name != "fifo":
        assert scheduler._time_attr == "training_iteration"


def test_pbt_mutates_training_parameters_and_keeps_architecture(space):
    mutations = pbt_mutations(space)
    assert HIDDEN not in mutations and FFN not in mutations  # a cloned checkpoint fixes the network's shape
    assert mutations[SCHEDULE] == ["MultiStep", "Warmuppoly", "Cosine"]  # shifted to a neighbour, never multiplied
    assert mutations[LR].lower == pytest.approx(1e-5)
    scheduler = build_scheduler("pbt", metric="PQ", mode="max", max_t=12, grace_period=2, space=space)
    assert scheduler._perturbation_interval == 2
    perturbed = scheduler._custom_explore_fn({LR: 2e-3, HIDDEN: 256, FFN: 1024, SCHEDULE: "Cosine"})
    assert perturbed[LR] == pytest.approx(1e-3)


def test_pbt_leaves_a_trials_last_report_alone(space):
    # An exploit there would restart the trial with no epoch left to train; the trial ends as it is.
    scheduler = build_scheduler("pbt", metric="PQ", mode="max", max_t=12, grace_period=2, space=space)
    assert isinstance(scheduler, PopulationBasedTraining)
    assert scheduler.on_trial_result(None, None, {"training_iteration": 12, "PQ": 1.0}) == TrialScheduler.CONTINUE
    assert not scheduler._trial_state  # neither ranked nor perturbed


def test_pbt_over_architecture_alone_is_refused():
    space = space_from_mapping({HIDDEN: {}}, load_spec(None), "arch.yaml")
    with pytest.raises(UserError, match=f"arch.yaml: PBT changes parameters of running trials.*{HIDDEN}"):
        build_scheduler("pbt", metric="PQ", mode="max", max_t=10, space=space)


def test_unknown_algorithm_and_scheduler_name_their_setting(space):
    with pytest.raises(UserError, match="automl.algorithm: unknown 'hyperopt'; expected one of tpe, random"):
        build_searcher(space, "hyperopt", "PQ")
    with pytest.raises(UserError, match="automl.scheduler: unknown 'pb2'; expected one of asha"):
        build_scheduler("pb2", "PQ", "max", max_t=10)


def test_grace_period_longer_than_a_trial_is_refused():
    with pytest.raises(UserError, match=r"automl.grace_period: 5 validations is longer than a whole trial \(3\)"):
        build_scheduler("asha", "PQ", "max", max_t=3, grace_period=5)


@pytest.mark.parametrize("algorithm", OPTUNA_ALGORITHMS)
@pytest.mark.parametrize("scheduler", [s for s in SCHEDULERS if s != "pbt"])
def test_optuna_algorithms_run_with_every_scheduler_but_pbt(algorithm, scheduler):
    if algorithm == "bohb" and scheduler not in ("hyperband", "asha"):
        with pytest.raises(UserError, match=f"automl.scheduler '{scheduler}': automl.algorithm 'bohb'"):
            check_combination(algorithm, scheduler)
    else:
        check_combination(algorithm, scheduler)


@pytest.mark.parametrize("algorithm, scheduler", [("tpe", "pbt"), ("grid", "pbt"), ("pbt", "asha"), ("pbt", "fifo")])
def test_pbt_goes_only_with_pbt(algorithm, scheduler):
    with pytest.raises(UserError, match=f"automl.algorithm '{algorithm}' with automl.scheduler '{scheduler}'"):
        check_combination(algorithm, scheduler)
    check_combination("pbt", "pbt")
