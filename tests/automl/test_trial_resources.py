"""A trial uses what Ray holds for it: Ray counts the cores the sweep may run on, a trial's loaders fit its CPUs."""

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from automl.spec import load_spec
from automl.sweep import reuses_processes, trials_at_once
from automl.trial import trial_spec
from tests.conftest import SMOKE_SPEC

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(("cpus", "spec_workers", "expected"), [(3, 8, 2), (12, 8, 8), (1, 8, 0), (0.5, 4, 0), (4, 0, 0)])
def test_a_trial_runs_at_most_one_loader_worker_per_cpu_beyond_its_own(tmp_path, cpus, spec_workers, expected):
    spec = load_spec(SMOKE_SPEC, [f"dataset.train.num_workers={spec_workers}", f"dataset.val.num_workers={spec_workers}"])
    trial = trial_spec(OmegaConf.to_container(spec, resolve=True), {"train.optim.lr": 1e-3}, tmp_path, 2, cpus)
    assert trial.dataset.train.num_workers == trial.dataset.val.num_workers == expected
    assert trial.train.optim.lr == 1e-3 and trial.train.num_epochs == 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two cores to confine a process to one")
def test_a_sweep_confined_to_one_core_starts_ray_with_one_cpu(tmp_path):
    script = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "import ray\n"
        "from automl.spec import load_spec\n"
        "from automl.sweep import _start_ray\n"
        f"_start_ray(load_spec({str(SMOKE_SPEC)!r}, ['results_dir={tmp_path}']))\n"
        "print('CPU', ray.cluster_resources()['CPU'])\n"
        "ray.shutdown()\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU 1.0" in done.stdout.splitlines()


@pytest.mark.parametrize(
    ("cluster", "cpu", "gpu", "expected"),
    [
        ({"CPU": 16.0, "GPU": 1.0}, 3.0, 0.25, 4),  # four quarters of the GPU; CPUs for five
        ({"CPU": 16.0, "GPU": 1.0}, 3.0, 1.0, 1),
        ({"CPU": 16.0, "GPU": 2.0}, 3.0, 0.0, 5),  # no GPU asked: CPUs bound
        ({"CPU": 32.0, "GPU": 4.0}, 8.0, 2.0, 2),  # two-GPU trials
        ({"CPU": 2.0}, 3.0, 0.0, 1),  # a trial larger than the cluster still gets to wait
        ({"CPU": 1.0}, 1 / 3, 0.0, 3),  # thirds of a CPU, not 2.999...
    ],
)
def test_trials_that_fit_side_by_side_may_wait_for_resources_together(cluster, cpu, gpu, expected):
    assert trials_at_once(cluster, cpu, gpu) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], True),  # one process a trial, ASHA
        (["automl.scheduler=fifo"], True),
        (["automl.scheduler=median"], True),
        (["automl.resources_per_trial={cpu: 2, gpu: 0.5}"], True),
        (["train.num_gpus=2"], False),  # a Ray Train run: its workers are new processes anyway
        (["automl.resources_per_trial={gpu: 2}"], False),
        (["automl.algorithm=pbt", "automl.scheduler=pbt"], False),  # paused trials resume from checkpoints
        (["automl.algorithm=bohb", "automl.scheduler=hyperband"], False),
    ],
)
def test_a_trial_starts_in_an_ended_trials_process_unless_it_runs_ray_train_or_is_paused_and_resumed(overrides, expected):
    assert reuses_processes(load_spec(SMOKE_SPEC, overrides)) is expected
