"""A real sweep on CPU: trials run and are tracked, the winner is kept, an interrupted sweep resumes."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from automl.ended_trials import ended_trials
from automl.search.study import study_storage
from automl.resume_guard import verify as verify_state
from automl.sweep import ENDED_TRIALS, STATE_DIGESTS, SweepFailed, _trials_done, run_sweep
from automl.trial import CHECKPOINT_FILE
from automl.tracking import TRIAL_TAG, tracking_uri
from model.checkpoint import read_checkpoint
from model.errors import UserError
from tests.conftest import SMOKE_SPEC, data_overrides

SWEEP = ["automl.num_samples=4", "automl.max_concurrent=2", "automl.max_epochs=10", "train.validation_interval=5", "automl.grace_period=5"]


def children(client, spec):
    experiment = client.get_experiment_by_name("synthetic_smoke").experiment_id
    [parent] = client.search_runs([experiment], "tags.`automl.policy` = 'on'")
    return parent, client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


@pytest.fixture(scope="module")
def sweep(synthetic_data, tmp_path_factory):
    from automl.spec import load_spec

    results = tmp_path_factory.mktemp("sweep")
    spec = load_spec(SMOKE_SPEC, [*data_overrides(synthetic_data), f"results_dir={results}", *SWEEP, "automl.baseline=true"], action="train")
    return spec, run_sweep(spec, SMOKE_SPEC)


def test_every_trial_is_a_child_run_with_its_params_and_metrics(sweep):
    spec, result = sweep
    client = MlflowClient(tracking_uri(spec))
    parent, runs = children(client, spec)
    assert parent.info.status == "FINISHED" and parent.data.params["algorithm"] == "tpe"
    assert len(runs) == result.num_trials == 4
    assert len({r.data.tags[TRIAL_TAG] for r in runs}) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"train.optim.lr", "train.optim.weight_decay", "train.optim.backbone_multiplier"} <= set(run.data.params)
        assert 1 <= len(client.get_metric_history(run.info.run_id, "PQ")) <= 2
    assert "final/PQ" in parent.data.metrics


def test_mlflow_reads_well_names_params_steps_and_per_class_artifacts(sweep):
    spec, _ = sweep
    client = MlflowClient(tracking_uri(spec))
    experiment = client.get_experiment_by_name("synthetic_smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the classic training view
    view = json.loads(experiment.tags["mlflow.sharedViewState.sweep"])
    assert view["selectedColumns"][:2] == ["metrics.`PQ`", "params.`train.optim.lr`"]
    parent, runs = children(client, spec)
    # the baseline and the winner's values are params; the parent's metrics are scores, never parameters
    assert "baseline.PQ" in parent.data.params and not any(k.startswith("baseline") for k in parent.data.metrics)
    assert float(parent.data.params["best.train.optim.lr"]) > 0
    assert not any("config" in k or "/" in k.split("/", 1)[-1] for k in parent.data.metrics)
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "baseline")}
    assert parent_artifacts == {"baseline/per_class.json", "baseline/per_class.html"}
    rows = json.loads(Path(client.download_artifacts(parent.info.run_id, "baseline/per_class.json")).read_text())
    assert {row["name"] for row in rows} >= {"circle"} and all("PQ" in row for row in rows)
    first_steps = set()
    for run in runs:
        lr = float(run.data.params["train.optim.lr"])
        assert run.info.run_name.startswith("t0") and f"lr={lr:.1e}" in run.info.run_name
        assert not any(k.startswith("train.") or k in ("step", "done", "training_iteration") for k in run.data.metrics)
        assert {"gpu_seconds", "wall_seconds"} <= set(run.data.metrics)
        # step = the trial's optimiser step (validations every 5 epochs), not the report count
        epochs = client.get_metric_history(run.info.run_id, "epoch")
        assert [m.value for m in epochs][:1] == [5] and epochs[0].step >= 5
        first_steps.add(epochs[0].step)
    assert len(first_steps) == 1  # same data and batch size: the same step at the first validation


def test_the_best_checkpoint_is_the_best_childs_best_validation(sweep):
    spec, result = sweep
    client = MlflowClient(tracking_uri(spec))
    parent, runs = children(client, spec)
    best_per_trial = {r.data.tags[TRIAL_TAG]: max(m.value for m in client.get_metric_history(r.info.run_id, "PQ")) for r in runs}
    winner = max(best_per_trial, key=best_per_trial.get)
    record = json.loads((Path(spec.results_dir) / "best" / "best.json").read_text())
    assert record["metrics"]["PQ"] == pytest.approx(best_per_trial[winner])
    assert winner in record["trial"]
    checkpoint = read_checkpoint(result.best.checkpoint)
    assert checkpoint["spec"]["train"]["optim"]["lr"] == pytest.approx(record["params"]["train.optim.lr"])
    # Re-evaluating the kept checkpoint gives the metric it was chosen for.
    assert parent.data.metrics["final/PQ"] == pytest.approx(best_per_trial[winner], abs=1e-4)
    [version] = client.search_model_versions("name = 'mask2former'")
    assert version.run_id == parent.info.run_id


def test_the_sweep_ends_with_its_report_and_keeps_its_optuna_study(sweep):
    spec, _ = sweep
    report = Path(spec.results_dir) / "report"
    assert {"index.html", "best_so_far.png", "learning_curves.png", "importance.png", "parallel_coordinates.png"} <= {p.name for p in report.iterdir()}
    study = optuna.load_study(study_name="synthetic_smoke", storage=study_storage(Path(spec.results_dir) / "automl" / "synthetic_smoke.optuna.journal"))
    assert len(study.trials) == 4 and all(t.value is not None for t in study.trials)
    client = MlflowClient(tracking_uri(spec))
    parent, _ = children(client, spec)
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_an_ended_trial_keeps_at_most_the_checkpoint_of_its_best_validation(sweep):
    spec, _ = sweep
    for trial_dir in (Path(spec.results_dir) / "automl" / "synthetic_smoke").glob("run_trial_*"):
        assert len(list(trial_dir.glob("checkpoint_*"))) <= 1


def test_a_finished_sweep_leaves_no_lightning_checkpoints_and_bounded_disk(sweep):
    spec, result = sweep
    automl_dir = Path(spec.results_dir) / "automl"
    assert not list(Path(spec.results_dir).rglob("*.ckpt"))
    used = sum(p.stat().st_size for p in automl_dir.rglob("*") if p.is_file())
    assert used < 30e6, f"{used / 1e6:.1f} MB under {automl_dir}"  # 4 trials of a tiny model
    kept = list(automl_dir.rglob("checkpoint_*/model_at_validation.pth"))
    assert 1 <= len(kept) <= 4  # one per trial at most: its best validation
    for path in kept:  # weights for evaluation and export; the optimiser state only a resume reads is gone
        checkpoint = read_checkpoint(path)
        assert "optimizer_states" not in checkpoint and checkpoint["state_dict"] and checkpoint["spec"]
    assert "optimizer_states" in read_checkpoint(result.best.checkpoint)  # the winner's copy stays whole


def test_a_sweep_whose_every_trial_fails_raises_naming_the_error_and_fails_the_parent_run(smoke_spec):
    # Every parameter frozen: each trial's optimiser gets no parameters and the trial fails.
    spec = smoke_spec("train.freeze=[backbone,pixel_decoder,transformer_decoder]", "automl.num_samples=2", "automl.max_epochs=1", "automl.max_failures=0")
    with pytest.raises(SweepFailed, match=r"all 2 trials failed; most common error \(2 of 2\): \w+Error: .*parameter.*; trial logs: .*/automl/synthetic_smoke/\*/error.txt"):
        run_sweep(spec, SMOKE_SPEC)
    client = MlflowClient(tracking_uri(spec))
    parent, runs = children(client, spec)
    assert parent.info.status == "FAILED" and {r.info.status for r in runs} == {"FAILED"}


def test_search_space_errors_come_before_any_trial(smoke_spec):
    spec = smoke_spec("automl.search_space={train.optim.momentum: {}}")
    with pytest.raises(UserError, match="train.optim.momentum.*not automl-enabled"):
        run_sweep(spec, SMOKE_SPEC)
    assert not (Path(spec.results_dir) / "automl").exists()


def launch(args, results, data, env=None):
    overrides = [*data_overrides(data), f"results_dir={results}", *SWEEP, "automl.num_samples=5", "automl.max_concurrent=1"]
    return subprocess.Popen(
        [sys.executable, "-m", "automl.cli", "launch", "-e", str(SMOKE_SPEC), *overrides, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ, **(env or {})},
    )


def finished_children(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synthetic_smoke")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''") if r.info.status == "FINISHED"]


def test_an_interrupted_sweep_resumes_and_accounts_for_every_trial(synthetic_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["automl.num_samples=4", "automl.max_epochs=5"]  # one validation a trial: the resume is what is tested
    first = launch(args, tmp_path, synthetic_data)
    deadline = time.time() + 300
    while len(finished_children(uri)) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 130, output
    assert "--resume" in output
    done_before = len(finished_children(uri))
    assert 2 <= done_before < 4
    # Tune's reuse_actors: a trial starts in the process of the trial that ended (no new interpreter, imports or
    # CUDA context). Tune writes the process id with every report.
    reports = trial_reports(tmp_path / "automl" / "synthetic_smoke")
    assert len(reports) >= 2 and len({report["pid"] for trial in reports.values() for report in trial}) == 1, reports

    second = launch(["--resume", *args], tmp_path, synthetic_data)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synthetic_smoke").experiment_id
    parents = client.search_runs([experiment], "tags.`automl.policy` = 'on'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(runs) == 4 and len({r.data.tags[TRIAL_TAG] for r in runs}) == 4  # none rerun, none duplicated
    assert all(r.info.status == "FINISHED" for r in runs)
    # best-so-far continues after the resume: it never drops, and ends at the best child's best
    best_so_far = [m.value for m in sorted(client.get_metric_history(parents[0].info.run_id, "best_PQ"), key=lambda m: (m.step, m.timestamp))]
    assert best_so_far == sorted(best_so_far)
    assert best_so_far[-1] == pytest.approx(max(m.value for r in runs for m in client.get_metric_history(r.info.run_id, "PQ")))
    assert (tmp_path / "best" / "mask2former_model_best.pth").exists()


def signed(experiment):
    try:
        verify_state(experiment, experiment.parent / f"{experiment.name}.{STATE_DIGESTS}")
    except UserError:
        return False
    return True


def saved_trials(experiment):
    """[(trial state, its run metadata)] in the experiment state Tune last saved (what --resume reads)."""
    for path in experiment.glob("experiment_state-*.json"):
        try:
            trials = json.loads(path.read_text())["trial_data"]
        except (OSError, ValueError):  # being rewritten
            return []
        return [(json.loads(state), json.loads(meta)) for state, meta in trials]
    return []


def saved_checkpoints(experiment):
    """{trial id: its newest checkpoint folder} in the saved experiment state."""
    newest = {}
    for state, meta in saved_trials(experiment):
        manager = bytes.fromhex(meta["checkpoint_manager"]["value"])  # Tune pickles it
        found = sorted(set(re.findall(rb"checkpoint_\d{6}", manager)))
        newest[state["trial_id"]] = found[-1].decode() if found else None
    return newest


def trial_reports(experiment):
    """{trial id: the results Tune wrote to its result.json} for the trials that reported."""
    reports = {}
    for path in experiment.glob("run_trial_*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        if lines:
            reports[lines[0]["trial_id"]] = lines
    return reports


def test_kill_9_in_the_last_epoch_then_resume_keeps_the_finished_trial_and_continues_the_other(synthetic_data, tmp_path):
    # Two trials one after the other, each validated after every one of its 3 epochs; the kill
    # comes when the saved state has the first trial done and the second at 2 of 3 validations.
    args = ["automl.num_samples=2", "automl.max_epochs=3", "train.validation_interval=1", "automl.grace_period=1", "automl.scheduler=fifo"]
    experiment = tmp_path / "automl" / "synthetic_smoke"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tune saves its state every 0.3 s here (1 s by default): an epoch of the smoke model is shorter than 1 s.
    first = launch(args, tmp_path, synthetic_data, env={"TUNE_GLOBAL_CHECKPOINT_S": "0.3"})
    # Kill when the saved state has the first trial done and the second at its second of three.
    # ... and once the sweep has signed that state (a kill between Tune's write and the signature
    # leaves state --resume refuses: the README's trust boundary).
    wait_for(lambda: (len(finished_children(uri)) == 1 and sorted(v or "" for v in saved_checkpoints(experiment).values()) == ["checkpoint_000001", "checkpoint_000002"]
                      and signed(experiment))
             or (first.poll() is not None and pytest.fail(first.stdout.read())), interval=0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    [finished] = finished_children(uri)

    second = launch(["--resume", *args], tmp_path, synthetic_data)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    client = MlflowClient(uri)
    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs([finished.info.experiment_id], "tags.`mlflow.parentRunId` != ''")}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values())
    trial = finished.data.tags[TRIAL_TAG]
    assert runs[trial].info.end_time == finished.info.end_time  # untouched by the resume
    [other] = [r for t, r in runs.items() if t != trial]
    steps = [m.step for m in client.get_metric_history(other.info.run_id, "PQ")]
    assert len(steps) == len(set(steps)) == 3  # continued, not restarted (a restart logs an epoch's step twice)
    for trial_dir in experiment.glob("run_trial_*"):
        assert list(trial_dir.glob("checkpoint_*/model_at_validation.pth")), trial_dir


def test_kill_9_right_after_an_asha_stop_then_resume_counts_the_stopped_trial(synthetic_data, tmp_path):
    # ASHA stops the first trial at its second and last validation, and Tune starts the second
    # trial in the first one's process (reuse_actors). The kill comes as soon as the state Tune
    # saved (and the sweep signed) has the first trial TERMINATED and the second one started
    # (a trial started after Tune's last save is not in it: the searcher proposes another). Tune
    # handles a stop at a rung the same way: the scheduler's decision, no last report of the trial's own.
    args = ["automl.num_samples=2", "automl.max_epochs=2", "train.validation_interval=1", "automl.grace_period=1", "automl.scheduler=asha"]
    experiment = tmp_path / "automl" / "synthetic_smoke"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def stopped_and_next_saved():
        trials = saved_trials(experiment)
        stopped = [state["trial_id"] for state, _ in trials if state["status"] == "TERMINATED"]
        return stopped if len(trials) == 2 and signed(experiment) else []

    first = launch(args, tmp_path, synthetic_data, env={"TUNE_GLOBAL_CHECKPOINT_S": "0.3"})
    [stopped] = wait_for(lambda: stopped_and_next_saved() or (first.poll() is not None and pytest.fail(first.stdout.read())), interval=0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    [finished] = finished_children(uri)
    assert finished.data.tags[TRIAL_TAG] == stopped
    assert ended_trials(experiment.parent / f"synthetic_smoke.{ENDED_TRIALS}") == {stopped}  # on disk before the kill
    assert len(trial_reports(experiment)[stopped]) == 2

    second = launch(["--resume", *args], tmp_path, synthetic_data)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output  # every trial counted, none left: not "interrupted"
    client = MlflowClient(uri)
    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs([finished.info.experiment_id], "tags.`mlflow.parentRunId` != ''")}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[stopped].info.end_time == finished.info.end_time  # untouched by the resume
    reports = trial_reports(experiment)
    assert len(reports[stopped]) == 2 and all(len(r) == 2 for r in reports.values())  # the stopped trial not run again


def test_a_trial_is_done_when_the_ledger_has_it_or_it_failed_whatever_its_saved_last_result():
    # Tune may save a trial that ran out without `done` in its last result; Ctrl-C leaves running
    # trials with reports but neither in the ledger nor failed.
    ran_out = SimpleNamespace(error=None, metrics={"trial_id": "a", "training_iteration": 3})
    failed = SimpleNamespace(error=RuntimeError("boom"), metrics={})
    interrupted = SimpleNamespace(error=None, metrics={"trial_id": "c", "training_iteration": 1})
    assert _trials_done([ran_out, failed, interrupted], {"a"}) == 2
    # a sweep started before the ledger existed: its trials that ended carry `done`
    earlier = SimpleNamespace(error=None, metrics={"trial_id": "d", "training_iteration": 3, "done": True})
    assert _trials_done([earlier, interrupted], set()) == 1


def test_resume_without_a_sweep_is_refused(smoke_spec):
    with pytest.raises(UserError, match="--resume: no sweep to continue"):
        run_sweep(smoke_spec(), SMOKE_SPEC, resume=True)


def trial_workers(sweep):
    # Only the sweep's session (it starts one): another Ray session on this machine, a parallel test's or a user's, is not ours to kill.
    found = subprocess.run(["pgrep", "-s", str(sweep.pid), "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def wait_for(condition, timeout=300, interval=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError


def test_a_crashing_trial_is_retried_then_marked_failed_while_the_sweep_completes(synthetic_data, tmp_path):
    sweep = launch(["automl.num_samples=3", "automl.max_failures=1", "automl.max_epochs=5"], tmp_path, synthetic_data)
    first = wait_for(lambda: trial_workers(sweep))[0]
    os.kill(first, signal.SIGKILL)  # the trial's process dies (as on an OOM kill)
    second = wait_for(lambda: [p for p in trial_workers(sweep) if p != first])[0]
    os.kill(second, signal.SIGKILL)  # its retry dies too: max_failures=1 is spent
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic_smoke").experiment_id
    runs = client.search_runs([experiment], "tags.`mlflow.parentRunId` != ''")
    assert len(runs) == 3
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["status"] == "error"
    assert sum(r.info.status == "FINISHED" for r in runs) == 2
    assert (tmp_path / "best" / "best.json").exists()


def test_two_worker_trials_run_through_ray_train_and_one_stopped_by_asha_frees_its_workers(synthetic_data, tmp_path):
    # Each trial is a 2-process DDP run (gloo on CPU) of two one-CPU workers; on two cores a trial starts only once
    # the last one's workers have given their CPUs back. In the grid's order, lr 1e-6, 3e-4, 4e-4. The sweep ranks
    # by the LOWEST mIoU, so ASHA stops the second trial at its first validation (it learnt more than the first one
    # there); the third runs after that stop. Tune takes a stopped trial's first report only.
    space = "{train.optim.lr: {options: [1.0e-6, 3.0e-4, 4.0e-4]}}"
    args = ["train.num_gpus=2", "automl.resources_per_trial={cpu: 1}", "automl.algorithm=grid", "automl.num_samples=3",
            f"automl.search_space={space}", "automl.scheduler=asha", "automl.max_epochs=6", "train.validation_interval=1",
            "automl.grace_period=1", "automl.reduction_factor=2", "automl.metric=mIoU", "automl.mode=min"]  # fmt: skip
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # Ray's session folders of this sweep alone (a short path: sockets)
    sweep = launch(args, tmp_path, synthetic_data, env={"RAY_TMPDIR": str(ray_dir)})
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output
    # The workers wrote their checkpoints to the sweep's storage: no copy of one is left in Ray's session folder.
    staged = list(ray_dir.rglob(CHECKPOINT_FILE))
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert not staged, staged
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic_smoke").experiment_id
    runs = client.search_runs([experiment], "tags.`mlflow.parentRunId` != ''", order_by=["attributes.start_time ASC"])
    trials = [(float(r.data.params["train.optim.lr"]), r.data.tags["status"], len(client.get_metric_history(r.info.run_id, "mIoU"))) for r in runs]
    assert [lr for lr, _, _ in trials] == [1e-6, 3e-4, 4e-4], output
    assert trials[0][1:] == ("finished", 6) and trials[1][1:] == ("stopped", 1), output
    assert trials[2][2] >= 1  # it ran after the stop
    # The last validation the stopped trial's Ray Train run registered (Ray's record of its checkpoints, which stays
    # when the checkpoints are pruned): the workers ended soon after the stop, long before their sixth.
    experiment = tmp_path / "automl" / "synthetic_smoke"
    [record] = experiment.glob(f"run_trial_{runs[1].data.tags[TRIAL_TAG]}_*/ray_train/*/checkpoint_manager_snapshot.json")
    assert json.loads(record.read_text())["latest_checkpoint_result"]["metrics"]["epoch"] <= 3
    # Once the sweep ended each trial keeps one checkpoint of its run (its best; all three are in the top keep_top_k).
    for run in runs:
        kept = [p for p in experiment.glob(f"run_trial_{run.data.tags[TRIAL_TAG]}_*/ray_train/*/checkpoint_*") if p.is_dir()]
        assert len(kept) == 1, kept
    assert (tmp_path / "best" / "mask2former_model_best.pth").exists(), output


# Seed 42 draws lr 1e-6 for trial 0 and 4e-4 for trial 1. Asynchronous PBT clones only a donor that
# has itself passed a perturbation point in the upper half (its checkpoint is taken there), so a trial
# that reaches a point before its better peer has nothing to clone yet; with points at validations 2 and
# 4 of 5 the worse trial gets a second chance whichever trial the machine runs ahead.
PBT_INTERVAL = 2  # epochs between validations
PBT_SPACE = "{train.optim.lr: {options: [1.0e-6, 4.0e-4]}, train.optim.weight_decay: {min: 1.0e-3, max: 0.1}}"


def test_population_based_training_clones_and_mutates_trials(synthetic_data, tmp_path):
    args = ["automl.algorithm=pbt", "automl.scheduler=pbt", "automl.num_samples=2", "automl.max_concurrent=2", f"automl.search_space={PBT_SPACE}",
            "automl.max_epochs=10", f"train.validation_interval={PBT_INTERVAL}", "automl.grace_period=2"]  # fmt: skip
    sweep = launch(args, tmp_path, synthetic_data)
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output
    experiment = tmp_path / "automl" / "synthetic_smoke"
    # Tune's log of exploits: [cloned trial, donor, their iterations, donor's config, the clone's new config]
    exploits = [json.loads(line) for line in (experiment / "pbt_global.txt").read_text().splitlines()]
    assert exploits, output
    for _, _, _, _, donor_config, new_config in exploits:  # the good trial is cloned, the bad one never
        assert donor_config["train.optim.lr"] == 4e-4
        assert new_config["train.optim.weight_decay"] != donor_config["train.optim.weight_decay"]  # explored, not copied
    # A clone continues from its donor's weights: after some exploit, the clone reports with the new values
    # one validation interval after the donor's report whose checkpoint it took (a restart from scratch
    # would report at the first validation again). Which exploit shows it depends on the order Tune logs
    # a report and applies the next exploit, so any one exploit may.
    reports = {name: [json.loads(line) for line in next(experiment.glob(f"run_trial_*_0000{name[0]}_*")).joinpath("result.json").read_text().splitlines()]
               for name in {e[0] for e in exploits} | {e[1] for e in exploits}}  # fmt: skip
    continued = []
    for target, donor, _, donor_iteration, _, new_config in exploits:
        source = next(r for r in reports[donor] if r["training_iteration"] == donor_iteration)
        continued.append(any(r["config"] == new_config and r["epoch"] == source["epoch"] + PBT_INTERVAL and r["step"] > source["step"] for r in reports[target]))
    assert any(continued), (exploits, reports)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("synthetic_smoke").experiment_id], "tags.`mlflow.parentRunId` != ''")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    # Every report the driver logged is in the trial's result.json too (what the sweep's results are read from).
    logged = {r.data.tags[TRIAL_TAG]: len(client.get_metric_history(r.info.run_id, "PQ")) for r in runs}
    assert logged == {trial: len(lines) for trial, lines in trial_reports(experiment).items()}
