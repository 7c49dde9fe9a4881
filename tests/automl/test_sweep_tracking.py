"""The sweep in MLflow, without Ray trials: run names, what counts as a metric, per-class artifacts,
and a resumed callback that continues its best-so-far from MLflow."""

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.execution.placement_groups import PlacementGroupFactory

from automl.sweep_tracking import MlflowSweepCallback, gpu_share, result_metrics
from automl.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker, per_class_rows, trial_run_name


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sweep", tmp_path / "artifacts")


def fake_trial(trial_id, lr, gpu=0.25):
    return SimpleNamespace(
        trial_id=trial_id, config={"train.optim.lr": lr}, status="RUNNING", last_result={},
        placement_group_factory=PlacementGroupFactory([{"CPU": 1, "GPU": gpu}]),
    )  # fmt: skip


def report(callback, trial, pq, step, seconds=10.0):
    result = {"PQ": pq, "step": step, "epoch": 1, "time_total_s": seconds, "training_iteration": 1, "done": False, "config/train.optim.lr": 1e-4}
    callback.on_trial_result(0, [trial], trial, result)


def test_child_run_names_show_the_trial_number_and_short_values():
    name = trial_run_name(3, {"train.optim.lr": 2.1e-4, "train.optim.weight_decay": 0.03, "model.mask_former.num_object_queries": 200})
    assert name == "t03 lr=2.1e-04 wd=0.03 q=200"


def test_result_metrics_keep_scores_and_drop_tune_bookkeeping_and_parameters():
    result = {"PQ": 41.5, "epoch": 3, "train_loss": 1.2, "step": 90, "done": True, "training_iteration": 2, "time_total_s": 5.0,
              "trial_id": "abc", "config/train.optim.lr": 1e-4, "trial_status": "nan_loss"}  # fmt: skip
    assert result_metrics(result) == {"PQ": 41.5, "epoch": 3.0, "train_loss": 1.2}


def test_gpu_share_is_the_trials_fraction_or_its_ray_train_workers():
    assert gpu_share(fake_trial("a", 1e-4, gpu=0.25), train_gpus=0.0) == 0.25
    assert gpu_share(fake_trial("a", 1e-4, gpu=0.0), train_gpus=2.0) == 2.0


def test_per_class_rows_carry_class_names():
    rows = per_class_rows({"PQ": 40.0, "PQ/0": 50.0, "IoU/0": 70.0, "PQ/1": float("nan")}, {0: "circle", 1: "sky"})
    assert rows == [{"class": "0", "name": "circle", "PQ": 50.0, "IoU": 70.0}, {"class": "1", "name": "sky", "PQ": None}]


def test_experiment_opens_in_the_classic_training_view(tracker):
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_per_class_values_are_json_and_html_artifacts_not_metrics(tracker, tmp_path):
    run = tracker.start_run("r")
    tracker.log_per_class(run, {"PQ": 40.0, "PQ/0": 50.0}, {0: "circle"}, "baseline")
    assert {a.path for a in tracker.client.list_artifacts(run, "baseline")} == {"baseline/per_class.json", "baseline/per_class.html"}
    rows = json.loads(Path(tracker.client.download_artifacts(run, "baseline/per_class.json", str(tmp_path))).read_text())
    assert rows == [{"class": "0", "name": "circle", "PQ": 50.0}]
    assert tracker.client.get_run(run).data.metrics == {}


def test_child_metrics_use_the_optimiser_step_and_gpu_seconds(tracker):
    parent = tracker.start_run("sweep")
    callback = MlflowSweepCallback(tracker, parent, "PQ", "max", {}, validations=2)
    trial = fake_trial("a", 1e-4)
    callback.on_trial_start(0, [trial], trial)
    report(callback, trial, 30.0, step=120, seconds=40.0)
    [run] = tracker.children(parent)
    assert run.info.run_name == "t01 lr=1.0e-04"
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run.info.run_id, "PQ")] == [(120, 30.0)]
    assert run.data.metrics["gpu_seconds"] == pytest.approx(10.0) and run.data.metrics["wall_seconds"] == 40.0
    assert "step" not in run.data.metrics and "config/train.optim.lr" not in run.data.metrics


def test_a_resumed_callback_continues_best_so_far_from_mlflow(tracker):
    parent = tracker.start_run("sweep")
    callback = MlflowSweepCallback(tracker, parent, "PQ", "max", {}, validations=2)
    first, second = fake_trial("a", 1e-4), fake_trial("b", 3e-4)
    for trial in (first, second):
        callback.on_trial_start(0, [trial], trial)
    report(callback, first, 7.39, step=100)
    report(callback, second, 5.0, step=100)
    resumed = pickle.loads(pickle.dumps(callback))  # what Tune restores on --resume: the state of its start
    assert resumed.best is None
    report(resumed, second, 4.41, step=200)  # a worse result after the resume
    history = tracker.client.get_metric_history(parent, "best_PQ")
    assert [m.value for m in history] == [7.39] and resumed.best == 7.39
    third = fake_trial("c", 1e-3)
    resumed.on_trial_start(0, [third], third)
    report(resumed, third, 9.0, step=50)
    history = tracker.client.get_metric_history(parent, "best_PQ")
    assert [(m.step, m.value) for m in history][-1] == (100 + 200 + 50, 9.0)  # step: optimiser steps the sweep spent
    assert {r.info.run_name.split()[0] for r in tracker.children(parent)} == {"t01", "t02", "t03"}
