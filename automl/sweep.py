"""`automl launch --policy on`: the hyperparameter sweep on Ray Tune, tracked in MLflow, and its winner.

The driver is the only MLflow writer: trials report to Tune, and a Tune callback here writes
one parent run for the sweep and one child run per trial (keyed by trial id, so a resumed
sweep continues its runs). After the sweep the best trial, at its best validation, is copied
to `<results_dir>/best/`, described in `best.json`, exported with `automl.export_best` and registered in the
model registry (`automl.model_registry`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow.fs
import ray
import torch
from omegaconf import DictConfig, OmegaConf
from ray import tune
from ray.tune.result import TRIAL_ID
from rich.console import Console

from automl.actions.evaluate import evaluate_checkpoint, write_metrics
from automl.ended_trials import EndedTrials, ended_trials, start_ledger
from automl.files import copy_file, write_json
from automl.host import usable_cores
from automl.model_registry import publish_winner
from automl.packing import OOM_REQUEUES, gpu_packer, without_auto_gpu
from automl.report import write_report
from automl.resume_guard import ResumeGuard
from automl.resume_guard import verify as verify_state
from automl.search import RESUMING_SCHEDULERS, SearchSpace, build_scheduler, build_searcher, check_combination, resolve_search_space
from automl.search.study import study_file, study_storage, warm_start_points
from automl.shared_data import decode_data
from automl.storage import exists, sweep_filesystem, worker_env
from automl.sweep_tracking import MlflowSweepCallback, log_baseline, log_winner
from automl.tracking import RUNS_VIEW, Tracker, run_tags
from automl.training import BEST_NAME, build_label_map, target_metric
from automl.trial import CHECKPOINT_FILE, RAY_TRAIN_DIR, STATUS_KEY, run_trial
from model.checkpoint import without_training_state
from model.data.files import is_remote, redact
from model.errors import UserError

log = logging.getLogger(__name__)
console = Console()
SWEEP_STATE = "sweep.json"  # beside the Ray experiment: the MLflow parent run to continue
STATE_DIGESTS = "state-digests.json"  # beside it: the keyed digests --resume checks (resume_guard)
ENDED_TRIALS = "ended-trials.txt"  # beside it: the ids of the trials that ran to their end (ended_trials)


class SweepInterrupted(Exception):
    """The sweep stopped before every trial ended (Ctrl-C or a signal); `--resume` continues it."""


class SweepFailed(Exception):
    """Every trial failed (an error, or a loss that became NaN): the sweep has no result."""


@dataclass
class BestTrial:
    """The winner at its best validation (all None/empty when no trial reported the metric)."""

    trial: str | None
    metrics: dict[str, float]
    params: dict[str, Any]
    checkpoint: Path | None


@dataclass
class SweepResult:
    best: BestTrial
    num_trials: int
    parent_run_id: str


# Ray Tune's setting of how many trials may wait for resources at once (default: one, for searchers).
MAX_PENDING = "TUNE_MAX_PENDING_TRIALS_PG"
# Ray Tune's setting of how long a reused trial process waits for the ended trial's thread (its
# Lightning teardown) before Tune gives up on reusing it and fails the next trial. Tune's 2 s
# is shorter than a GPU trial's teardown.
THREAD_TIMEOUT = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
THREAD_TIMEOUT_S = 120


def sweep_dir(spec: DictConfig) -> Path:
    return Path(spec.results_dir) / "automl"


def trial_workers(spec: DictConfig) -> int:
    """Processes of one trial: several for `resources_per_trial.gpu` > 1 or `train.num_gpus` > 1 (Ray Train DDP)."""
    gpus = float(dict(spec.automl.resources_per_trial).get("gpu", 0))
    return max(int(gpus), spec.train.num_gpus * spec.train.num_nodes, 1)


def _cpus_per_worker(spec: DictConfig) -> float:
    """A multi-worker trial's CPUs (automl.resources_per_trial.cpu, default one per worker) split over its workers."""
    workers = trial_workers(spec)
    return float(dict(spec.automl.resources_per_trial).get("cpu", workers)) / workers


def trial_resources(spec: DictConfig) -> dict[str, float]:
    """What the trial's own process holds: automl.resources_per_trial, else one GPU when there are
    GPUs, else one CPU. A multi-worker trial's process only drives: its workers ask Ray Train for theirs."""
    if trial_workers(spec) > 1:
        return {"cpu": 0.01}  # Tune needs a non-empty request; the driver only waits on its workers
    requested = {k.lower(): float(v) for k, v in dict(spec.automl.resources_per_trial).items()}
    unknown = set(requested) - {"cpu", "gpu"}
    if unknown:
        raise UserError(f"automl.resources_per_trial: unknown resources {sorted(unknown)}; expected cpu and gpu")
    if not requested:
        requested = {"cpu": 1.0, "gpu": 1.0} if torch.cuda.is_available() else {"cpu": 1.0}
    requested.setdefault("cpu", 1.0)
    if requested.get("gpu", 0) > 1 and requested["gpu"] != int(requested["gpu"]):
        raise UserError(f"automl.resources_per_trial.gpu: {requested['gpu']} — above one GPU, ask for whole GPUs")
    return requested


def reuses_processes(spec: DictConfig) -> bool:
    """Whether a trial may start in the process of an ended trial with the same resources (Tune's
    `reuse_actors`), sparing the process start (imports, the CUDA context).

    Not for multi-worker trials: Tune stops a trial by answering its report, but their process
    waits in Ray Train instead, so one the scheduler stopped would train on to its end, its
    workers holding their GPUs, and the next trial would fail if that outlasted the reset's
    timeout; and what reuse spares is in the workers, which Ray Train starts for every run anyway.
    Not with a scheduler that pauses trials and resumes them (PBT's exploits, HyperBand's rungs):
    Tune may restart a paused trial in its process at once, and its loggers then copy the trial's
    result.json back from the storage, which Tune has not yet synced with the newest reports
    (in the PBT test, two or three of an exploited trial's five)."""
    return trial_workers(spec) == 1 and spec.automl.scheduler not in RESUMING_SCHEDULERS


def trials_at_once(cluster: Mapping[str, float], cpu: float, gpu: float) -> int:
    """How many trials asking `cpu` CPUs and `gpu` GPUs each (0: not asked) `cluster` holds at once; at least one."""
    fits = [cluster.get(name, 0.0) / amount for name, amount in (("CPU", cpu), ("GPU", gpu)) if amount > 0]
    return max(1, int(round(min(fits), 9))) if fits else 1


def run_sweep(spec: DictConfig, spec_path: str | os.PathLike | None, resume: bool = False) -> SweepResult:
    """Run (or with `resume`, continue) the sweep the spec describes; returns its winner."""
    started = time.monotonic()
    sweep = _prepare(spec, spec_path)  # every spec and search-space error before Ray starts
    store = _locate(sweep, resume)
    searcher = _build_searcher(sweep, resume)
    tracker = Tracker.for_spec(sweep.spec, spec_path)
    tracker.end_interrupted_runs(sweep.spec.results_dir)
    parent_id = _parent_run(tracker, sweep.spec, spec_path, store.state_file, resume, sweep.space)
    label_map = build_label_map(sweep.spec)
    if sweep.spec.automl.baseline and not resume:
        _log_baseline(sweep, tracker, parent_id, label_map)
    results = _fit(sweep, store, searcher, tracker, parent_id, label_map, resume, started)
    trials_ended = time.monotonic()
    _check_complete(results, sweep, store, tracker, parent_id)
    outcome = _select_best(results, sweep.metric, sweep.mode, sweep.spec)
    _prune_checkpoints(results, sweep.metric, sweep.mode, sweep.spec.automl.keep_top_k, sweep.validations)
    if store.local:
        console.print(f"disk used by the sweep: {_disk_usage(Path(store.experiment)) / 2**20:.1f} MiB in {store.experiment}", highlight=False)
    final = _evaluate_and_publish(sweep, outcome, tracker, parent_id, label_map) if outcome.checkpoint is not None else None
    log_winner(tracker, parent_id, outcome.params, outcome.metrics, final, label_map.names)
    console.print(f"report: {write_report(sweep.spec, tracker, parent_id, sweep.space, sweep.metric)}", highlight=False)
    tracker.end_run(parent_id)
    console.print(
        f"sweep: {time.monotonic() - started:.1f} s, of which {trials_ended - started:.1f} s until its trials ended and "
        f"{time.monotonic() - trials_ended:.1f} s after (the winner evaluated, registered, the report)", highlight=False,
    )
    return SweepResult(outcome, len(results), parent_id)


@dataclass
class _Sweep:
    """What the steps of one sweep read, derived once from its spec."""

    spec: DictConfig  # resources_per_trial.gpu 'auto' replaced by the packer's amounts
    name: str  # the spec file's stem: names the Ray experiment, the Optuna study and the state files
    root: Path  # <results_dir>/automl
    space: SearchSpace
    packer: Any  # the GPU packer of resources_per_trial.gpu: auto, else None
    metric: str
    mode: str  # the metric's direction: max or min
    max_epochs: int
    validations: int  # Tune reports per trial: one per validation
    resources: dict[str, float]  # what each trial's process holds
    scheduler: Any


@dataclass
class _Store:
    """Where the sweep's Ray experiment lives, and the state files beside it."""

    filesystem: pyarrow.fs.FileSystem
    path: str  # the storage path Tune is given
    experiment: str  # <path>/<name>
    shown: str  # the experiment for messages, credentials redacted
    state_file: Path  # the MLflow parent run to continue
    digests: Path  # the keyed digests --resume checks
    ended: Path  # the ledger of the trials that ran to their end
    local: bool  # on this machine's disk (state signed and verified) rather than object storage

    @property
    def tune_filesystem(self) -> pyarrow.fs.FileSystem | None:
        # Tune is given a filesystem only for object storage: with one, it stages a local sweep's files elsewhere.
        return None if self.local else self.filesystem


def _prepare(spec: DictConfig, spec_path: str | os.PathLike | None) -> _Sweep:
    """The search space, the trial resources, the scheduler: every error a user can cause in the spec."""
    space = resolve_search_space(spec)
    root = sweep_dir(spec)
    name = Path(spec_path).stem if spec_path else "sweep"
    packer = gpu_packer(spec, space, root, name)  # resources_per_trial.gpu: auto
    spec = without_auto_gpu(spec)
    metric, mode = target_metric(spec), spec.automl.mode
    max_epochs = spec.automl.max_epochs or spec.train.num_epochs
    resources = trial_resources(spec)
    check_combination(spec.automl.algorithm, spec.automl.scheduler)
    # Tune counts reports, one per validation: epochs -> validations.
    validations = math.ceil(max_epochs / spec.train.validation_interval)
    grace = max(1, math.ceil(spec.automl.grace_period / spec.train.validation_interval))
    scheduler = build_scheduler(spec.automl.scheduler, metric, mode, validations, grace, spec.automl.reduction_factor, space)
    return _Sweep(spec, name, root, space, packer, metric, mode, max_epochs, validations, resources, scheduler)


def _locate(sweep: _Sweep, resume: bool) -> _Store:
    """The experiment's storage; with `resume` there must be a sweep to continue, without it none to overwrite."""
    storage = sweep.spec.automl.storage_uri or str(sweep.root)
    filesystem, path = sweep_filesystem(storage)
    store = _Store(
        filesystem, path, f"{path}/{sweep.name}", f"{redact(storage).rstrip('/')}/{sweep.name}",
        sweep.root / f"{sweep.name}.{SWEEP_STATE}", sweep.root / f"{sweep.name}.{STATE_DIGESTS}",
        sweep.root / f"{sweep.name}.{ENDED_TRIALS}", not is_remote(storage),
    )  # fmt: skip
    if resume and not tune.Tuner.can_restore(store.experiment, storage_filesystem=store.tune_filesystem):
        raise UserError(f"--resume: no sweep to continue at {store.shown}; run without --resume to start one")
    # --resume trusts only state this installation signed; state in object storage is as trusted
    # as the bucket's access control (README: the trust boundary).
    if resume and store.local:
        verify_state(Path(store.experiment), store.digests)  # before Ray unpickles any of it
    if not resume and exists(filesystem, store.experiment):
        raise UserError(f"{store.shown} holds an earlier sweep; continue it with --resume or choose another results_dir or automl.storage_uri")
    return store


def _build_searcher(sweep: _Sweep, resume: bool) -> Any:
    automl = sweep.spec.automl
    warm = warm_start_points(automl.warm_start, sweep.mode) if automl.warm_start and not resume else None
    return build_searcher(
        sweep.space, automl.algorithm, sweep.metric, sweep.mode, automl.seed, automl.max_concurrent,
        storage=study_storage(study_file(sweep.root, sweep.name)), study_name=sweep.name, points_to_evaluate=warm,
    )  # fmt: skip


def _log_baseline(sweep: _Sweep, tracker: Tracker, parent_id: str, label_map: Any) -> None:
    """Where the sweep starts from: the starting weights (or an untrained model) on dataset.val."""
    baseline = evaluate_checkpoint(sweep.spec, sweep.spec.train.pretrained_model_path or None)
    log_baseline(tracker, parent_id, baseline, label_map.names)
    console.print(f"baseline on dataset.val: {sweep.metric} {baseline.get(sweep.metric, float('nan')):.2f}", highlight=False)


def _trainable(sweep: _Sweep, store: _Store, label_map: Any) -> Any:
    """run_trial with the spec and the resources each trial holds."""
    spec = sweep.spec
    return tune.with_resources(
        tune.with_parameters(
            run_trial, base_spec=OmegaConf.to_container(spec, resolve=True), max_epochs=sweep.max_epochs, metric=sweep.metric,
            timeout_minutes=spec.automl.trial_timeout_minutes, experiment=(store.tune_filesystem, store.experiment),
            workers=trial_workers(spec), cpus_per_worker=_cpus_per_worker(spec),
            # Decoded once here, one copy in Ray's object store; a trial on another machine may not see the files it names.
            data=None if spec.automl.ray_address else decode_data(spec, label_map), packed=sweep.packer is not None,
        ),
        sweep.packer.resources if sweep.packer else sweep.resources,
    )  # fmt: skip


def _fit(
    sweep: _Sweep, store: _Store, searcher: Any, tracker: Tracker, parent_id: str, label_map: Any, resume: bool, started: float
) -> tune.ResultGrid:
    """Run the trials on Ray (started here unless automl.ray_address names a cluster), signing the state Tune saved.

    started: time.monotonic() at the sweep's start, for the line that says how long it took to reach its trials."""
    trainable = _trainable(sweep, store, label_map)
    workers = trial_workers(sweep.spec)
    train_gpus = float(workers) if workers > 1 and torch.cuda.is_available() else 0.0
    callback = None if resume else MlflowSweepCallback(tracker, parent_id, sweep.metric, sweep.mode, run_tags(sweep.spec), sweep.validations, train_gpus)
    _start_ray(sweep.spec)
    # At a Ctrl-C, Tune warns once per trial that never started (no results yet): dozens of lines with many pending.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Tune lets a custom searcher's trials wait for resources one at a time, and a trial stops
    # waiting only once its process has started (seconds of imports), so trials that fit side by
    # side would start one after another: let as many wait as fit at once.
    pending = None if sweep.spec.automl.max_concurrent or os.environ.get(MAX_PENDING) else _trials_at_once(sweep)
    if pending:
        os.environ[MAX_PENDING] = str(pending)
    try:
        if resume:  # the restored experiment brings its searcher, scheduler and callback back
            tuner = tune.Tuner.restore(
                store.experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=store.tune_filesystem
            )
        else:
            start_ledger(store.ended)  # the ledger of an earlier sweep of this name may remain
            tuner = _new_tuner(sweep, store, trainable, searcher, callback)
        console.print(f"trials start {time.monotonic() - started:.1f} s after the sweep began (checks, the data decoded once, Ray)", highlight=False)
        return tuner.fit()
    except BaseException:
        tracker.end_run(parent_id, "KILLED")
        raise
    finally:
        if store.local:
            ResumeGuard(Path(store.experiment), store.digests).sign()  # the state Tune saved last, once its sync has ended
        if not sweep.spec.automl.ray_address:
            ray.shutdown()
        if pending:
            del os.environ[MAX_PENDING]


def _trials_at_once(sweep: _Sweep) -> int:
    """trials_at_once for this sweep's trials on the running Ray cluster (a packed trial's GPU share is
    decided per trial: CPUs bound those)."""
    workers = trial_workers(sweep.spec)
    if workers > 1:
        cpu, gpu = workers * _cpus_per_worker(sweep.spec), float(workers) if torch.cuda.is_available() else 0.0
    else:
        cpu, gpu = sweep.resources.get("cpu", 1.0), 0.0 if sweep.packer else sweep.resources.get("gpu", 0.0)
    return trials_at_once(ray.cluster_resources(), cpu, gpu)


def _new_tuner(sweep: _Sweep, store: _Store, trainable: Any, searcher: Any, callback: MlflowSweepCallback) -> tune.Tuner:
    automl = sweep.spec.automl
    pbt = automl.algorithm == "pbt"
    return tune.Tuner(
        trainable,
        # PBT draws its first configurations from Tune domains; every other algorithm asks Optuna.
        param_space=sweep.space.tune_domains() if pbt else None,
        # metric and mode live in the searcher and the scheduler (Tune refuses them twice).
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=sweep.scheduler, num_samples=automl.num_samples,
            max_concurrent_trials=(automl.max_concurrent or None) if pbt else None, reuse_actors=reuses_processes(sweep.spec),
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=store.path,
            storage_filesystem=store.tune_filesystem,
            failure_config=tune.FailureConfig(max_failures=automl.max_failures + (OOM_REQUEUES if sweep.packer else 0)),
            # Every checkpoint stays while the sweep runs: the experiment state Tune saved last
            # (what --resume restores after a kill) may name any of them, and PBT clones
            # other trials' older ones. _prune_checkpoints trims them once the sweep ends.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=sweep.metric, checkpoint_score_order=sweep.mode),
            # The ledger first: a later callback that fails must not keep an ended trial out of it.
            callbacks=[EndedTrials(store.ended), callback, *([ResumeGuard(Path(store.experiment), store.digests)] if store.local else []), *([sweep.packer] if sweep.packer else [])],
            verbose=0,
        ),
    )  # fmt: skip


def _check_complete(results: tune.ResultGrid, sweep: _Sweep, store: _Store, tracker: Tracker, parent_id: str) -> None:
    """Raise SweepInterrupted when trials are left (Ctrl-C: Tune saved its state), SweepFailed when none scored."""
    done = _trials_done(results, ended_trials(store.ended))
    if done < sweep.spec.automl.num_samples:
        tracker.end_run(parent_id, "KILLED")
        raise SweepInterrupted(f"sweep interrupted with {done} of {sweep.spec.automl.num_samples} trials done")
    failure = _all_failed(results, sweep.metric, store.shown)
    if failure:
        tracker.end_run(parent_id, "FAILED")
        raise SweepFailed(failure)


def _evaluate_and_publish(sweep: _Sweep, outcome: BestTrial, tracker: Tracker, parent_id: str, label_map: Any) -> dict[str, float]:
    """The winner re-evaluated on dataset.val, logged to the parent run, exported and registered."""
    final = evaluate_checkpoint(sweep.spec, str(outcome.checkpoint))
    write_metrics(final, outcome.checkpoint.parent, label_map)
    console.print(f"winner re-evaluated on dataset.val: {sweep.metric} {final.get(sweep.metric, float('nan')):.2f}", highlight=False)
    tracker.log_artifact(parent_id, outcome.checkpoint, "best")
    tracker.log_artifact(parent_id, outcome.checkpoint.parent / "best.json", "best")
    publish_winner(tracker, parent_id, sweep.spec, outcome.checkpoint)
    return final


def _parent_run(tracker: Tracker, spec: DictConfig, spec_path: Any, state_file: Path, resume: bool, space: Any) -> str:
    if resume and state_file.exists():
        parent_id = json.loads(state_file.read_text())["parent_run_id"]
        tracker.client.update_run(parent_id, status="RUNNING")
        return parent_id
    params = {
        "algorithm": spec.automl.algorithm,
        "scheduler": spec.automl.scheduler,
        "num_samples": spec.automl.num_samples,
        "metric": target_metric(spec),
        "search_space": json.dumps(space.describe()),
    }
    parent_id = tracker.start_run(f"sweep-{Path(spec_path).stem if spec_path else 'spec'}", params, {**run_tags(spec), "automl.policy": "on"})
    tracker.share_runs_view(RUNS_VIEW, target_metric(spec), spec.automl.mode, space.keys)
    if spec_path:
        tracker.log_artifact(parent_id, spec_path, "spec")
    write_json(state_file, {"parent_run_id": parent_id, "tracking_uri": tracker.uri})
    return parent_id


def _start_ray(spec: DictConfig) -> None:
    # Checkpoints every validation are the point here; Tune's warning about them is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The object-storage endpoint, also for workers on other machines, and the reset timeout of a
    # reused trial process (read there).
    env = {**worker_env(), THREAD_TIMEOUT: os.environ.get(THREAD_TIMEOUT, str(THREAD_TIMEOUT_S))}
    runtime_env = {"env_vars": env}
    # The experiment state (what --resume restores) saved every second rather than every 10 s
    # or more: after a kill -9 a trial resumes from its newest checkpoint, not from scratch.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if spec.automl.ray_address:
        ray.init(address=spec.automl.ray_address, ignore_reinit_error=True, runtime_env=runtime_env)
    elif not ray.is_initialized():
        # A cluster of this sweep's own ("local": never join another Ray instance found on the
        # machine, which would run another user's code and files). It serves nothing beyond this
        # machine: no Prometheus exporter (it listens on every interface without authentication)
        # and the dashboard on loopback. The dashboard (Ray's state API, which cleans up the Train
        # runs of stopped multi-worker trials) starts when ray[default] is installed.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        # Ray counts the machine's cores: confined to fewer (taskset, a Slurm or container cpuset),
        # it would start more trials at once than there are cores for their `cpu` amounts.
        ray.init(address="local", num_cpus=usable_cores(), include_dashboard=None, dashboard_host="127.0.0.1", ignore_reinit_error=True, log_to_driver=False, runtime_env=runtime_env)


def _select_best(results: Any, metric: str, mode: str, spec: DictConfig) -> BestTrial:
    """The trial whose best validation is best (scope 'all'), copied with its checkpoint to <results_dir>/best/."""
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
    except RuntimeError:
        return BestTrial(None, {}, {}, None)
    history = best.metrics_dataframe
    column = history[metric]
    row = history.loc[column.idxmax() if mode == "max" else column.idxmin()]
    metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    checkpoint_path = None
    source = _checkpoint_of(best, row, metric, mode)
    if source is not None:
        out = Path(spec.results_dir) / "best"
        checkpoint_path = out / f"{BEST_NAME}.pth"
        with source.as_directory() as directory:  # downloaded when the sweep's storage is remote
            copy_file(Path(directory) / CHECKPOINT_FILE, checkpoint_path)
        record = {"trial": Path(best.path).name, "params": best.config, "metrics": metrics, "metric": metric, "mode": mode, "checkpoint": str(checkpoint_path), "created": time.time()}
        write_json(out / "best.json", record)
    return BestTrial(Path(best.path).name, metrics, dict(best.config), checkpoint_path)


def _checkpoint_of(best: Any, row: Any, metric: str, mode: str) -> tune.Checkpoint | None:
    """The checkpoint of the best trial's best validation: kept by Tune, or by Ray Train for a
    multi-worker trial, whose workers wrote it in the trial's folder of the sweep's storage (its
    reports carry the path as written; it is looked up relative to the trial's folder as found now)."""
    kept = sorted(best.best_checkpoints, key=lambda item: item[1].get(metric, float("nan")), reverse=mode == "max")
    if kept:
        return kept[0][0]
    train_path = row.get("checkpoint_path")
    marker = f"/{RAY_TRAIN_DIR}/"
    if not isinstance(train_path, str) or marker not in train_path:
        return None
    stored = f"{best.path}/{train_path[train_path.index(marker) + 1 :]}"
    return tune.Checkpoint(stored, filesystem=best.filesystem) if exists(best.filesystem, f"{stored}/{CHECKPOINT_FILE}") else None


def _prune_checkpoints(results: Any, metric: str, mode: str, keep_top_k: int, validations: int) -> None:
    """Once the sweep has ended, each trial keeps what can still be used: one that ran all its
    validations, or was stopped early but is among the top `keep_top_k` by metric, the checkpoint
    of its best validation as weights only (an ended trial is never resumed, so its optimiser state
    goes); other early-stopped trials none; a failed one its best and latest in full, from which a
    resumed sweep retries it."""
    scored = []
    for result in results:
        if result.metrics_dataframe is None or metric not in result.metrics_dataframe:
            continue
        values = result.metrics_dataframe[metric].dropna()
        best = (values.max() if mode == "max" else values.min()) if len(values) else float("nan")
        finished = int(result.metrics.get("training_iteration", 0)) >= validations
        scored.append((best, finished, result))
    ranked = sorted((s for s in scored if s[0] == s[0]), key=lambda s: s[0], reverse=mode == "max")
    top = {id(result) for _, _, result in ranked[:keep_top_k]}
    for _, finished, result in scored:
        failed = result.error is not None
        keep = _best_and_latest(result, metric, mode, latest=failed) if failed or finished or id(result) in top else set()
        for entry in _checkpoint_folders(result):
            if entry.base_name not in keep:
                result.filesystem.delete_dir(entry.path)
            elif not failed:
                _drop_training_state(result.filesystem, f"{entry.path}/{CHECKPOINT_FILE}")


def _checkpoint_folders(result: Any) -> list[pyarrow.fs.FileInfo]:
    """The trial's checkpoint folders in the sweep's storage: Tune's, and those the workers of a
    multi-worker trial saved in its Ray Train run."""
    filesystem = result.filesystem

    def folders(path: str) -> list[pyarrow.fs.FileInfo]:
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(path)) if exists(filesystem, path) else []
        return [e for e in entries if e.type == pyarrow.fs.FileType.Directory]

    found = [e for e in folders(result.path) if e.base_name.startswith("checkpoint_")]
    for run in folders(f"{result.path}/{RAY_TRAIN_DIR}"):
        found += [e for e in folders(run.path) if e.base_name.startswith("checkpoint_")]
    return found


def _best_and_latest(result: Any, metric: str, mode: str, latest: bool) -> set[str]:
    """Folder names of the trial's checkpoint at its best validation (its latest when none scored)
    and, when `latest`, of its latest one: Tune's, or for a multi-worker trial those its reports name."""
    sign = 1.0 if mode == "max" else -1.0
    scored = [(Path(checkpoint.path).name, metrics.get(metric)) for checkpoint, metrics in result.best_checkpoints]
    newest = Path(result.checkpoint.path).name if result.checkpoint is not None else None
    history = result.metrics_dataframe
    if not scored and history is not None and "checkpoint_path" in history:  # Ray Train saved them
        reports = history.dropna(subset=["checkpoint_path"])
        scored = [(Path(path).name, value) for path, value in zip(reports["checkpoint_path"], reports.get(metric, [None] * len(reports)))]
        newest = scored[-1][0] if scored else None
    finite = [(name, v) for name, v in scored if isinstance(v, (int, float)) and math.isfinite(v)]
    keep = {max(finite, key=lambda nv: sign * nv[1])[0]} if finite else set()
    if newest is not None and (latest or not keep):
        keep.add(newest)
    return keep


def _drop_training_state(filesystem: pyarrow.fs.FileSystem, path: str) -> None:
    """Rewrite the checkpoint file `path` (local or in the sweep's object store) as weights only,
    through a temporary file moved over it, so that a kill leaves the old file or the new one."""
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return
    with filesystem.open_input_file(path) as f:
        checkpoint = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save(without_training_state(checkpoint), buffer)
    with filesystem.open_output_stream(f"{path}.tmp") as f:
        f.write(buffer.getvalue())
    filesystem.move(f"{path}.tmp", path)


def _trials_done(results: Any, ended: set[str]) -> int:
    """Trials that ended on their own: those that ran out or were stopped by the scheduler (the
    ledger `ended`, or `done` in the saved last result: a sweep started before the ledger existed
    has only that), and those that failed. A trial that Ctrl-C or a kill stopped is neither."""
    return sum(1 for result in results if result.error is not None or result.metrics.get(TRIAL_ID) in ended or result.metrics.get("done"))


def _all_failed(results: Any, metric: str, experiment: str) -> str | None:
    """When no trial reported a finite metric: the message naming the most common trial error."""
    if any(math.isfinite(v) for r in results if r.metrics_dataframe is not None and metric in r.metrics_dataframe for v in r.metrics_dataframe[metric]):
        return None
    errors = Counter(_error_line(result) for result in results)
    error, count = errors.most_common(1)[0]
    return f"all {len(results)} trials failed; most common error ({count} of {len(results)}): {error}; trial logs: {experiment}/*/error.txt"


def _error_line(result: Any) -> str:
    """One line for why a trial failed: its exception (Ray wraps it) or a NaN loss."""
    if result.error is None:
        return "the training loss became NaN" if result.metrics.get(STATUS_KEY) == "nan_loss" else "no finite value of the metric reported"
    error = getattr(result.error, "cause", None) or result.error
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _disk_usage(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())
