"""The sweep report from MLflow runs written the way the sweep writes them (no Ray trials)."""

import math
from types import SimpleNamespace

import pytest
from ray.tune.execution.placement_groups import PlacementGroupFactory

from automl.report import FIGURES, best_so_far, collect_trials, parameter_importance, sweep_gpu_seconds, write_report
from automl.search.space import space_from_mapping
from automl.spec.load import load_spec
from automl.sweep_tracking import MlflowSweepCallback
from automl.tracking import Tracker

LR, WD, QUERIES = "train.optim.lr", "train.optim.weight_decay", "model.mask_former.num_object_queries"
ENTRIES = {LR: {"min": 1e-5, "max": 1e-3}, WD: {"min": 1e-3, "max": 0.2}, QUERIES: {"options": [100, 200]}}
# (lr, wd, queries, PQ per validation, stopped early): lr decides the score, the rest is noise
TRIALS = [
    (1e-5, 0.01, 100, [5.0], True),
    (3e-4, 0.05, 200, [20.0, 35.0], False),
    (1e-4, 0.002, 100, [15.0, 25.0], False),
    (2e-5, 0.1, 200, [6.0], True),
    (5e-4, 0.02, 100, [22.0, 38.0], False),
    (5e-5, 0.15, 200, [10.0], True),
]
STEPS_PER_VALIDATION, SECONDS_PER_VALIDATION, GPU_SHARE = 50, 36.0, 0.25


@pytest.fixture
def sweep(tmp_path):
    spec = load_spec(None, [f"results_dir={tmp_path / 'results'}"])
    space = space_from_mapping(ENTRIES, spec, "test space")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sweep", tmp_path / "artifacts")
    parent = tracker.start_run("sweep")
    callback = MlflowSweepCallback(tracker, parent, "PQ", "max", {}, validations=2)
    for i, (lr, wd, queries, scores, stopped) in enumerate(TRIALS):
        trial = SimpleNamespace(
            trial_id=f"trial{i}", config={LR: lr, WD: wd, QUERIES: queries}, status="RUNNING", last_result={},
            placement_group_factory=PlacementGroupFactory([{"CPU": 1, "GPU": GPU_SHARE}]),
        )  # fmt: skip
        callback.on_trial_start(0, [trial], trial)
        for v, score in enumerate(scores, 1):
            result = {"PQ": score, "step": v * STEPS_PER_VALIDATION, "time_total_s": v * SECONDS_PER_VALIDATION, "training_iteration": v}
            callback.on_trial_result(0, [trial], trial, result)
            trial.last_result = result
        callback.on_trial_complete(0, [trial], trial)
    return spec, space, tracker, parent


def test_trials_come_back_with_typed_params_curves_status_and_gpu_seconds(sweep):
    spec, space, tracker, parent = sweep
    trials = collect_trials(tracker, parent, "PQ", space)
    assert [t.params for t in trials] == [{LR: lr, WD: wd, QUERIES: q} for lr, wd, q, _, _ in TRIALS]
    assert [t.status for t in trials] == ["stopped" if stopped else "finished" for *_, stopped in TRIALS]
    assert [s for s, _, _ in trials[1].curve] == [50, 100]
    validations = sum(len(scores) for *_, scores, _ in TRIALS)
    assert sweep_gpu_seconds(trials) == pytest.approx(validations * SECONDS_PER_VALIDATION * GPU_SHARE)


def test_best_so_far_never_drops_and_ends_at_the_total_gpu_hours(sweep):
    spec, space, tracker, parent = sweep
    trials = collect_trials(tracker, parent, "PQ", space)
    hours, best, label = best_so_far(trials, "max")
    assert label == "GPU-hours" and best == sorted(best) and best[-1] == 38.0
    assert hours == sorted(hours) and hours[-1] == pytest.approx(sweep_gpu_seconds(trials) / 3600)


def test_importance_ranks_the_parameter_that_decides_the_score_first(sweep):
    spec, space, tracker, parent = sweep
    importance = parameter_importance(collect_trials(tracker, parent, "PQ", space), space, "max")
    assert set(importance) == {LR, WD, QUERIES} and max(importance, key=importance.get) == LR
    assert math.isclose(sum(importance.values()), 1.0)


def test_report_writes_the_page_and_figures_and_logs_them_to_the_parent(sweep):
    spec, space, tracker, parent = sweep
    index = write_report(spec, tracker, parent, space, "PQ")
    assert index.parent.name == "report" and all((index.parent / name).stat().st_size > 5000 for name in FIGURES)
    page = index.read_text()
    assert "38.00" in page and "GPU-hours used" in page and all(f'src="{name}"' in page for name in FIGURES)
    assert page.index("t05") < page.index("t02") < page.index("t01")  # trials best first
    logged = {a.path for a in tracker.client.list_artifacts(parent, "report")}
    assert logged == {f"report/{name}" for name in (*FIGURES, "index.html")}
