"""The sweep's Optuna study on disk: kept by the searcher, read back for a warm start."""

import optuna
import pytest

from automl.search import build_searcher
from automl.search.space import space_from_mapping
from automl.search.study import study_file, study_storage, warm_start_points
from automl.spec.load import load_spec
from model.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR, WD = "train.optim.lr", "train.optim.weight_decay"


@pytest.fixture
def space():
    return space_from_mapping({LR: {"min": 1e-5, "max": 1e-3}, WD: {"min": 1e-3, "max": 0.2}}, load_spec(None), "test space")


def finish(searcher, trial_id, score):
    config = searcher.suggest(trial_id)
    searcher.on_trial_complete(trial_id, {"PQ": score, **config})
    return config


def test_the_searcher_keeps_its_study_in_the_journal_under_results_dir(space, tmp_path):
    path = study_file(tmp_path / "automl", "sweep")
    searcher = build_searcher(space, "tpe", "PQ", "max", seed=0, storage=study_storage(path), study_name="sweep")
    configs = [finish(searcher, f"t{i}", score) for i, score in enumerate([10.0, 30.0, 20.0])]
    study = optuna.load_study(study_name="sweep", storage=study_storage(path))
    assert [t.value for t in study.trials] == [10.0, 30.0, 20.0]
    assert [t.params[LR] for t in study.trials] == [c[LR] for c in configs]


def test_a_warm_start_tries_the_previous_sweeps_best_configurations_first(space, tmp_path):
    previous = tmp_path / "previous"
    searcher = build_searcher(space, "tpe", "PQ", "max", seed=0, storage=study_storage(study_file(previous / "automl", "sweep")), study_name="sweep")
    configs = [finish(searcher, f"t{i}", score) for i, score in enumerate([10.0, 30.0, 20.0, 5.0])]
    points = warm_start_points(previous, "max", top=2)
    assert points == [configs[1], configs[2]]  # best first
    warm = build_searcher(space, "tpe", "PQ", "max", seed=1, points_to_evaluate=points)
    assert [warm.suggest("a"), warm.suggest("b")] == [configs[1], configs[2]]
    assert warm_start_points(previous, "min", top=1) == [configs[3]]


def test_a_warm_start_without_an_earlier_study_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"automl.warm_start: no sweep study \(\*.optuna.journal\) under .*automl"):
        warm_start_points(tmp_path, "max")


def test_population_based_training_cannot_warm_start(space):
    with pytest.raises(UserError, match="automl.warm_start: population-based training"):
        build_searcher(space, "pbt", "PQ", "max", points_to_evaluate=[{LR: 1e-4}])
