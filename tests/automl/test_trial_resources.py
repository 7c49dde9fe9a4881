"""A trial uses what Ray holds for it: Ray counts the cores the sweep may run on, a trial's loaders fit its CPUs."""

import os
import subprocess
import sys

import pytest

from automl.spec import load_spec
from automl.trial import trial_spec
from tests.conftest import SMOKE_SPEC

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(("cpus", "spec_workers", "expected"), [(3, 8, 2), (12, 8, 8), (1, 8, 0), (0.5, 4, 0), (4, 0, 0)])
def test_a_trial_runs_at_most_one_loader_worker_per_cpu_beyond_its_own(tmp_path, cpus, spec_workers, expected):
    spec = load_spec(SMOKE_SPEC, [f"dataset.train.num_workers={spec_workers}", f"dataset.val.num_workers={spec_workers}"], action="train")
    from omegaconf import OmegaConf

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
        f"_start_ray(load_spec({str(SMOKE_SPEC)!r}, ['results_dir={tmp_path}'], action='train'))\n"
        "print('CPU', ray.cluster_resources()['CPU'])\n"
        "ray.shutdown()\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU 1.0" in done.stdout.splitlines()
