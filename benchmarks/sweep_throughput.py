"""Sweep throughput: trials per hour, GPU-busy fraction, per-trial overhead and best score per search space.

Runs `automl launch` once per case, each in a fresh process (its own Ray cluster and CUDA),
with `results_dir` under --work, then reads the sweep back from its MLflow store:

- `resources` cases: the same sweep (`--space`, trials of `--max-epochs`, FIFO) with each
  `automl.resources_per_trial` of --resources (e.g. `{gpu: 1}`, `{gpu: 0.25}`, `{gpu: auto}`):
  trials/hour, GPU-busy fraction (nvidia-smi sampled every 0.5 s; the timeline goes to the
  JSON), per-trial overhead (first step, train, validation, checkpoint, teardown);
- `spaces` cases: one sweep per search space of --spaces (default, tao, quick), ASHA: the best
  score within the same time.

--budget-s is the wall time of the whole run, writing the data included (a call's limit can be
given as it is). The data is written (or found in --data) first; the cases then share what is
left equally on one clock: each one runs (Ray start-up included) until its share is nearly
spent, is stopped with Ctrl-C as a user would, killed if it has not ended in time, and read
back before its share ends; a share below --case-floor-s is refused. Prints a table per
experiment and writes everything to --out, after every case (a run cut short keeps its cases).

    # GPU machine (one H100), the issue's numbers in one call of at most 420 s: 6 cases of 63 s,
    # trials of 2 epochs over 45 training images so that a case can end several
    python benchmarks/sweep_throughput.py --size 256 --num-images 60 --max-epochs 2 --validation-interval 2 \
        --resources "{cpu: 3, gpu: 1}" "{cpu: 3, gpu: 0.25}" "{cpu: 3, gpu: auto}" --spaces default tao quick \
        --budget-s 380 --out benchmarks/results/h100_sweep_value.json

    # CPU check at a tiny size (the smoke spec), 4 minutes on 2 cores
    python benchmarks/sweep_throughput.py --tiny --num-images 24 --max-epochs 1 --validation-interval 1 \
        --resources "{cpu: 1}" --spaces quick --space-resources "{cpu: 1}" --budget-s 240 --out /tmp/sweep_throughput.json
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automl.synthetic_data import data_overrides  # noqa: E402
from benchmarks._common import cell, write_json  # noqa: E402

PHASES = ("first_step_s", "train_s", "val_s", "checkpoint_s", "teardown_s")
STOP_S = 20.0  # of each case's share: Ctrl-C this long before its end, for the sweep to stop and save
READ_S = 10.0  # of each case's share: reading the sweep back from MLflow after it ended


def size_overrides(size: int) -> list[str]:
    return [f"dataset.augmentation.train_crop_size=[{size},{size}]", f"dataset.augmentation.test_min_size={size}", f"dataset.augmentation.test_max_size={size}"]


class GpuSampler:
    """nvidia-smi every 0.5 s in the background: (seconds since start, utilisation %, memory MiB)."""

    def __init__(self, path: Path):
        self.path, self.process = path, None
        if shutil.which("nvidia-smi"):
            self.file = path.open("w")
            query = ["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "500"]
            if os.environ.get("CUDA_VISIBLE_DEVICES"):  # only the GPUs the sweep may use (nvidia-smi ignores the variable)
                query += ["-i", os.environ["CUDA_VISIBLE_DEVICES"]]
            self.process = subprocess.Popen(query, stdout=self.file, stderr=subprocess.DEVNULL)

    def stop(self) -> list[dict[str, float]]:
        if self.process is None:
            return []
        self.process.terminate()
        self.process.wait()
        self.file.close()
        samples = []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4 and parts[2].isdigit():
                samples.append({"time": parts[0], "gpu": int(parts[1]), "util": int(parts[2]), "mem_mib": int(parts[3])})
        return samples


def run_sweep(spec: Path, overrides: list[str], results: Path, budget_s: float) -> dict[str, Any]:
    """One `automl launch` in its own process group for at most `budget_s`: Ctrl-C `STOP_S` before
    the end, killed at the end if it is still running."""
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    command = [sys.executable, "-m", "automl.cli", "launch", "-e", str(spec), f"results_dir={results}", *overrides]
    sampler = GpuSampler(results / "nvidia_smi.csv")
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with (results / "launch.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            process.wait(timeout=max(budget_s - STOP_S, 0.0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # a user's Ctrl-C: the sweep stops resumable
            try:
                process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    wall = time.monotonic() - start
    samples = sampler.stop()
    log_tail = (results / "launch.log").read_text(errors="replace")[-6000:]  # the JSON keeps why a case ran few trials
    return {"command": command, "returncode": process.returncode, "wall_s": wall, "log_tail": log_tail, "gpu_samples": samples, **read_sweep(results, spec)}


def read_sweep(results: Path, spec: Path) -> dict[str, Any]:
    """Trials, their states, best score and overhead phases, from the sweep's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(spec.stem)
    if experiment is None:
        return {"trials": []}
    trials = []
    for run in client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=10000):
        metrics = run.data.metrics
        scores = [m.value for m in client.get_metric_history(run.info.run_id, "PQ") if math.isfinite(m.value)]
        trials.append({
            "name": run.info.run_name, "status": run.data.tags.get("status", run.info.status.lower()), "best_PQ": max(scores, default=None),
            "gpu_seconds": metrics.get("gpu_seconds"), "wall_seconds": metrics.get("wall_seconds"),
            **{phase: metrics.get(phase) for phase in PHASES},
        })  # fmt: skip
    return {"trials": trials}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    done = [t for t in run["trials"] if t["status"] in ("finished", "stopped", "nan_loss")]
    scores = [t["best_PQ"] for t in run["trials"] if t["best_PQ"] is not None]
    util = [s["util"] for s in run["gpu_samples"]]
    phases = {p: _mean([t[p] for t in done]) for p in PHASES}
    walls = [t["wall_seconds"] + (t["teardown_s"] or 0.0) for t in done if t["wall_seconds"] is not None]
    work = [(t["train_s"] or 0.0) + (t["val_s"] or 0.0) for t in done if t["wall_seconds"] is not None]
    return {
        "trials_done": len(done),
        "trials_per_hour": 3600 * len(done) / run["wall_s"] if run["wall_s"] > 0 else None,
        "best_PQ": max(scores, default=None),
        "gpu_busy_fraction": sum(u > 0 for u in util) / len(util) if util else None,
        "mean_gpu_util_pct": _mean(util),
        "mean_trial_wall_s": _mean(walls),
        "overhead_fraction": 1 - sum(work) / sum(walls) if walls and sum(walls) > 0 else None,
        "gpu_hours": sum(t["gpu_seconds"] or 0.0 for t in run["trials"]) / 3600,
        **{f"mean_{p}": v for p, v in phases.items()},
    }


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    columns = ["trials_done", "trials_per_hour", "best_PQ", "gpu_busy_fraction", "mean_trial_wall_s", "overhead_fraction",
               "mean_first_step_s", "mean_train_s", "mean_val_s", "mean_checkpoint_s", "mean_teardown_s", "gpu_hours"]  # fmt: skip
    print(f"\n{title}\n| case | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for case, summary in rows:
        print(f"| {case} | " + " | ".join(cell(summary[c], 3 if "fraction" in c or c == "gpu_hours" else 1) for c in columns) + " |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--spec", type=Path, default=ROOT / "experiments" / "synthetic_swin_t.yaml")
    p.add_argument("--tiny", action="store_true", help="the smoke spec (a tiny model) on synthetic 128x128 data, for a CPU check")
    p.add_argument("--data", type=Path, default=None, help="an `automl data synth` folder (written there when missing)")
    p.add_argument("--num-images", type=int, default=120, help="images when the data is written (a quarter for validation)")
    p.add_argument("--size", type=int, default=256, help="image size, training crop and test size")
    p.add_argument("--resources", nargs="*", default=["{cpu: 3, gpu: 1}", "{cpu: 3, gpu: 0.25}", "{cpu: 3, gpu: auto}"])
    p.add_argument("--space", default="default", help="search space of the resources cases")
    p.add_argument("--spaces", nargs="*", default=["default", "tao", "quick"], help="search spaces compared at a fixed time")
    p.add_argument("--space-resources", default="{cpu: 3, gpu: auto}", help="resources of the spaces cases")
    p.add_argument("--num-samples", type=int, default=1000, help="trials of each resources case (at most: the case ends with its share of the budget)")
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--validation-interval", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=3600.0, help="wall time of the whole run, data writing included; the cases share what the data leaves")
    p.add_argument("--case-floor-s", type=float, default=60.0, help="the least share of a case: Ray start-up, a first trial, the stop and the reading")
    p.add_argument("--override", nargs="*", default=[], help="extra dotted spec overrides for every case (e.g. train.cuda_graph=true)")
    p.add_argument("--work", type=Path, default=ROOT / "results" / "sweep_throughput")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "sweep_throughput.json")
    args = p.parse_args(argv)
    cases = len(args.resources) + len(args.spaces)
    if cases and args.budget_s / cases < args.case_floor_s:
        p.error(f"--budget-s {args.budget_s:g}: {cases} cases get {args.budget_s / cases:.0f} s each, below --case-floor-s {args.case_floor_s:g}; give more time or fewer cases")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    args = parse_args(argv)
    spec = ROOT / "experiments" / "synthetic_smoke.yaml" if args.tiny else args.spec
    size = 128 if args.tiny else args.size
    data = args.data or args.work / f"data{size}"
    if not (data / "label_map.json").exists():
        from model.data import write_synthetic_dataset

        write_synthetic_dataset(data, num_images=args.num_images, size=(size, size), seed=0)
    common = [*data_overrides(data), *([] if args.tiny else size_overrides(size)), "automl.policy=on",
              f"automl.max_epochs={args.max_epochs}", f"train.validation_interval={args.validation_interval}", "automl.max_concurrent=0", *args.override]  # fmt: skip
    cases = len(args.resources) + len(args.spaces)
    share = (args.budget_s - (time.monotonic() - started)) / cases
    if share < args.case_floor_s:
        raise SystemExit(f"--budget-s {args.budget_s:g}: writing the data left {share:.0f} s a case, below --case-floor-s {args.case_floor_s:g}")
    record: dict[str, Any] = {"spec": str(spec), "data": str(data), "size": size, "case_s": share, "args": {k: str(v) for k, v in vars(args).items()}, "resources": [], "spaces": []}
    print(f"data ready in {data} after {time.monotonic() - started:.0f} s; {cases} cases of {share:.0f} s", flush=True)
    start = time.monotonic()

    def time_left(case: int) -> float:
        """Seconds the sweep of case `case` (0-based) may run: to its share's end on the shared clock, less the reading."""
        return start + (case + 1) * share - READ_S - time.monotonic()

    for resources in args.resources:
        overrides = [*common, f"automl.resources_per_trial={resources}", f"automl.search_space={args.space}",
                     f"automl.num_samples={args.num_samples}", "automl.scheduler=fifo"]  # fmt: skip
        run = run_sweep(spec, overrides, args.work / f"resources_{len(record['resources'])}", time_left(len(record["resources"])))
        record["resources"].append({"resources_per_trial": resources, **run, "summary": summarise(run)})
        write_json(record, args.out, quiet=True)
    for space in args.spaces:
        overrides = [*common, f"automl.resources_per_trial={args.space_resources}", f"automl.search_space={space}",
                     "automl.num_samples=1000", "automl.scheduler=asha", "automl.grace_period=1"]  # fmt: skip
        run = run_sweep(spec, overrides, args.work / f"space_{space}", time_left(len(args.resources) + len(record["spaces"])))
        record["spaces"].append({"search_space": space, **run, "summary": summarise(run)})
        write_json(record, args.out, quiet=True)
    record["elapsed_s"] = time.monotonic() - start
    print_table(f"Trials per hour ({args.space} space, trials of {args.max_epochs} epochs, FIFO, {share:.0f} s each)",
                [(r["resources_per_trial"], r["summary"]) for r in record["resources"]])  # fmt: skip
    print_table(f"Best PQ after {share:.0f} s ({args.space_resources}, ASHA)", [(r["search_space"], r["summary"]) for r in record["spaces"]])
    print(f"\n{cases} cases in {record['elapsed_s']:.0f} s (budget {args.budget_s:g} s)")
    write_json(record, args.out)
    return record


if __name__ == "__main__":
    main()
