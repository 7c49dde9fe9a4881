"""Multi-GPU benchmark: DDP/FSDP training scaling, sharded validation, and sweeps packed on one box of GPUs.

Cases, in a fixed order of value (`--parts` picks parts; everything inside one wall-time budget, `--budget-s`):

    ddp         `--policy off` DDP training at crops `--crop` (`--batch` per GPU) on max(--gpus), then 1, then the
                other counts: median step time after warm-up, images/s, scaling efficiency (images/s on N GPUs /
                (N x images/s on one GPU)), peak memory of rank 0 and the start-up time (process start to first step).
    fsdp        the same with FSDP on max(--gpus).
    validation  folded into the ddp cases (no start-up of its own): the largest-count case trains `--val-train-steps`,
                saves its weights and validates them at the global batch `--val-global-batch` (sharded, merged);
                the one-GPU case validates the same weights at the same global batch. Metrics must agree; times scale.
    sweeps      `automl launch` with ASHA for `--sweep-s` each per `--sweep-resources` ({gpu: 4}, {gpu: 1}, {gpu: 0.5},
                {gpu: auto}), then Ctrl-C: trials ended per hour, best PQ, ASHA stops, and the per-GPU memory
                timeline (nvidia-smi every second) with the memory 1-5 s after each ASHA stop.

The synthetic data is written before the clock of the cases starts, into `--data` (kept: a second call reuses it).
The plan (case -> seconds) is printed before the first case; a case gets its planned seconds plus whatever earlier
cases left unused, and a case that does not fit is recorded as skipped. The JSON is rewritten after every case, so a
call cut short keeps what it measured. Each measurement runs in its own process (Lightning starts one per GPU);
NCCL's NVLink multicast stays off in every process started here, Ray's workers included.

    python benchmarks/multi_gpu.py --out $OUT/multi_gpu.json --budget-s 540                 # 4 GPUs
    python benchmarks/multi_gpu.py --spec experiments/synthetic_smoke.yaml --data /tmp/multi_gpu_data --size 128 \\
        --gpus 2 1 --crop 128 --batch 2 --steps 3 --val-train-steps 4 --parts ddp validation sweeps \\
        --sweep-resources "{cpu: 1}" --sweep-s 60 --case-s 60 --budget-s 400 --out /tmp/multi_gpu.json   # CPU (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `automl` and `model` are the repo's packages
    sys.path.insert(0, str(ROOT))

from automl.synthetic_data import data_overrides  # noqa: E402
from benchmarks._common import cell, write_json  # noqa: E402

# NVLink multicast off (the device machines' rule), for this process and everything it starts.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NCCL_ENV)
WARMUP_STEPS = 3
STOP_S = 45  # a sweep's allowance after Ctrl-C to save its state, end its runs and be read back
PARTS = ("ddp", "fsdp", "validation", "sweeps")


# ---------------------------------------------------------------------------------------------
# the worker: one training case, run as `multi_gpu.py --worker ...` (Lightning relaunches it per GPU)
# ---------------------------------------------------------------------------------------------
def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> None:
    """Train `--steps` steps (the first WARMUP_STEPS untimed); optionally save the weights and validate saved ones.

    Rank 0 writes {step_s, world, peak_gib, startup_s[, validation]} to --result.
    """
    import lightning.pytorch as pl
    import torch

    from automl.spec import load_spec
    from automl.training import build_datamodule, build_label_map, build_module, seed_everything, trainer_settings
    from model.checkpoint import load_weights

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.first_step_at = self.val_s = None

        def on_train_batch_start(self, *_: Any) -> None:
            _sync()
            self.start = time.perf_counter()
            self.first_step_at = self.first_step_at or time.time()

        def on_train_batch_end(self, *_: Any) -> None:
            _sync()
            self.steps.append(time.perf_counter() - self.start)

        def on_validation_start(self, *_: Any) -> None:
            _sync()
            self.val_start = time.perf_counter()

        def on_validation_end(self, *_: Any) -> None:
            _sync()
            self.val_s = time.perf_counter() - self.val_start

    spec = load_spec(args.spec, json.loads(args.overrides))
    seed_everything(spec)
    label_map = build_label_map(spec)
    timer = Timer()
    settings = {**trainer_settings(spec), "max_steps": args.steps, "limit_val_batches": 0, "enable_checkpointing": False}
    trainer = pl.Trainer(**settings, callbacks=[timer], enable_progress_bar=False, enable_model_summary=False)
    module, datamodule = build_module(spec, label_map), build_datamodule(spec, label_map)
    trainer.fit(module, datamodule=datamodule)
    if args.save:
        trainer.save_checkpoint(args.save)
    validation = None
    if args.validate:  # the same processes score the saved weights: no second start-up
        load_weights(module.model, args.validate)
        trainer.limit_val_batches = 1.0
        trainer.validate(module, datamodule=datamodule, verbose=False)
        validation = {"seconds": timer.val_s, "metrics": module.validation_metrics, "batch_per_gpu": spec.dataset.val.batch_size}
    if trainer.is_global_zero:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        result = {"step_s": timer.steps[WARMUP_STEPS:], "world": trainer.world_size, "peak_gib": peak,
                  "startup_s": timer.first_step_at - args.launched, "validation": validation}  # fmt: skip
        Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace, overrides: list[str], timeout: float, steps: int, save: str = "", validate: str = "") -> dict[str, Any]:
    """One training case in a fresh process group; its result, or {'error': ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--spec", str(args.spec), "--overrides", json.dumps(overrides),
                   "--result", str(result), "--steps", str(steps), "--save", save, "--validate", validate, "--launched", str(time.time())]  # fmt: skip
        started = time.monotonic()
        # Its own process group: on a timeout the ranks Lightning started go with it.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output = process.communicate(timeout=max(timeout, 1))[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"error": f"timed out after {timeout:.0f} s", "process_s": time.monotonic() - started}
        if process.returncode != 0 or not result.exists():
            return {"error": output[-1500:], "process_s": time.monotonic() - started}
        return {**json.loads(result.read_text()), "process_s": time.monotonic() - started}


def case_overrides(args: argparse.Namespace, results: Path, gpus: int, strategy: str = "ddp") -> list[str]:
    return [
        *data_overrides(args.data), f"results_dir={results}", "train.seed=0", f"train.num_gpus={gpus}", f"train.gpu_ids={list(range(gpus))}",
        f"train.distributed_strategy={strategy}", f"dataset.augmentation.train_crop_size=[{args.crop},{args.crop}]",
        f"dataset.train.batch_size={args.batch}", f"dataset.val.batch_size={max(args.val_global_batch // gpus, 1)}", "train.num_epochs=100000",
        *args.override,
    ]  # fmt: skip


def train_case(args: argparse.Namespace, work: Path, timeout: float, gpus: int, strategy: str, validation: bool) -> dict[str, Any]:
    """One training case; with `validation`, the largest DDP case saves its weights and every DDP case validates them."""
    checkpoint = work / "validation.ckpt"
    largest = gpus == max(args.gpus)
    steps = WARMUP_STEPS + args.steps
    save = validate = ""
    if validation and strategy == "ddp":
        if largest:
            steps, save = max(steps, args.val_train_steps), str(checkpoint)
        validate = str(checkpoint) if largest or checkpoint.exists() else ""
    row: dict[str, Any] = {"strategy": strategy, "crop": args.crop, "batch_per_gpu": args.batch, "gpus": gpus}
    measured = run_worker(args, case_overrides(args, work / f"{strategy}_{gpus}", gpus, strategy), timeout, steps, save, validate)
    if measured.get("step_s"):
        median = statistics.median(measured["step_s"])
        measured.update(median_step_s=median, images_per_s=args.batch * gpus / median)
    return {**row, **measured}


def scaling(rows: list[dict[str, Any]]) -> None:
    """Scaling efficiency of every training row against the one-GPU DDP row."""
    base = next((r for r in rows if r["strategy"] == "ddp" and r["gpus"] == 1 and "images_per_s" in r), None)
    for row in rows:
        if base and "images_per_s" in row:
            row["scaling_efficiency"] = row["images_per_s"] / (row["gpus"] * base["images_per_s"])


class GpuMemorySampler:
    """Per-GPU used memory (MiB) from nvidia-smi every second, in a thread: [(seconds since start, [MiB per GPU])]."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, list[int]]] = []
        self.start, self.stopped = time.time(), threading.Event()
        self.available = shutil.which("nvidia-smi") is not None
        if self.available:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
            if out.returncode == 0:
                self.samples.append((round(time.time() - self.start, 1), [int(v) for v in out.stdout.split()]))

    def stop(self) -> None:
        self.stopped.set()

    def between(self, start: float, end: float) -> list[list[int]]:
        """Samples from `start` to `end` seconds after the sampler started."""
        return [mib for t, mib in self.samples if start <= t <= end]


def sweep_case(args: argparse.Namespace, work: Path, seconds: float, resources: str) -> dict[str, Any]:
    """`automl launch` with ASHA for `seconds`, then Ctrl-C; what it did, read back from its MLflow store."""
    from mlflow.tracking import MlflowClient

    results = work / f"sweep_{len(list(work.glob('sweep_*')))}"
    overrides = [
        *data_overrides(args.data), f"results_dir={results}", "train.seed=0", f"automl.resources_per_trial={resources}",
        "automl.num_samples=1000", "automl.max_concurrent=0", "automl.scheduler=asha", f"automl.max_epochs={args.sweep_epochs}",
        "automl.grace_period=1", "automl.reduction_factor=2", "train.validation_interval=1", "train.checkpoint_interval=1000",
        "dataset.train.num_workers=2", "dataset.val.num_workers=2", *args.override,  # up to eight trials share the CPU cores
    ]  # fmt: skip
    sampler = GpuMemorySampler()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    sweep = subprocess.Popen([sys.executable, "-m", "automl.cli", "launch", "-e", str(args.spec), "--policy", "on", *overrides],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)  # fmt: skip
    try:
        output = sweep.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C: the sweep saves its state and ends its runs
        try:
            output = sweep.communicate(timeout=STOP_S - 10)  # 10 s left to read the store back[0]
        except subprocess.TimeoutExpired:
            os.killpg(sweep.pid, signal.SIGKILL)
            output = sweep.communicate()[0]
    elapsed = time.time() - sampler.start
    time.sleep(3)  # memory once every process is gone
    sampler.stop()
    row: dict[str, Any] = {"resources_per_trial": resources, "wall_s": elapsed, "exit_code": sweep.returncode}
    db = results / "mlflow.db"
    if not db.exists():
        return {**row, "error": output[-1500:]}
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(Path(args.spec).stem)
    runs = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=10000) if experiment else []
    ended = [r for r in runs if r.info.end_time]
    best = [max(m.value for m in history) for r in runs if (history := client.get_metric_history(r.info.run_id, "PQ"))]
    stops = sorted(r.info.end_time / 1000 - sampler.start for r in runs if r.data.tags.get("status") == "stopped")
    starts = sorted(r.info.start_time / 1000 - sampler.start for r in runs)
    row.update(
        trials_started=len(runs), trials_ended=len(ended), trials_per_hour=len(ended) / elapsed * 3600, best_PQ=max(best) if best else None,
        stopped_by_asha=len(stops),
        after_asha_stop=[{"stop_s": stop, "next_trial_start_s": next((s for s in starts if s > stop), None),
                          "mib_per_gpu_1_to_5_s_after": sampler.between(stop + 1, stop + 5)} for stop in stops],
        mib_per_gpu_timeline=sampler.samples,
    )  # fmt: skip
    if not runs:
        row["error"] = output[-1500:]
    return row


def make_data(args: argparse.Namespace) -> float:
    """Write the synthetic set into --data unless it is there; seconds it took (0 when reused)."""
    if (args.data / "label_map.json").exists():
        return 0.0
    from model.data import write_synthetic_dataset

    started = time.monotonic()
    partial = args.data.with_name(args.data.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_synthetic_dataset(partial, num_images=args.num_images, size=(args.size, args.size), seed=0, val_fraction=0.5)
    shutil.rmtree(args.data, ignore_errors=True)
    partial.rename(args.data)  # complete or absent: a call cut mid-write leaves nothing a later call would trust
    return time.monotonic() - started


def wanted_cases(args: argparse.Namespace) -> list[str]:
    """The cases of the chosen parts, in order of value: DDP on the most GPUs, on one, on the rest; FSDP; the sweeps."""
    cases: list[str] = []
    if "ddp" in args.parts:
        cases += [f"ddp:{n}" for n in sorted(set(args.gpus), key=lambda n: (n != max(args.gpus), n != 1, n))]
    elif "validation" in args.parts:  # the validation rides on the largest and the one-GPU DDP cases
        cases += [f"ddp:{n}" for n in sorted({max(args.gpus), 1}, reverse=True)]
    if "fsdp" in args.parts:
        cases.append(f"fsdp:{max(args.gpus)}")
    if "sweeps" in args.parts:
        cases += [f"sweep:{r}" for r in args.sweep_resources]
    return cases


def plan_cases(args: argparse.Namespace, seconds: float) -> list[tuple[str, float]]:
    """(case, planned seconds) for the cases that fit `seconds`, in order; the planned sweeps share what is left."""
    plan, left = [], seconds
    for case in [c for c in wanted_cases(args) if not c.startswith("sweep:")]:
        # Lightning starts the other ranks only once the first reaches fit: start-up grows with the ranks.
        planned = args.case_s + (int(case.partition(":")[2]) - 1) * args.startup_s_per_rank
        if left >= planned:
            plan.append((case, planned))
            left -= planned
    sweeps = [c for c in wanted_cases(args) if c.startswith("sweep:")][: int(left // (args.sweep_s + STOP_S))]
    return plan + [(case, left / len(sweeps)) for case in sweeps]


def print_tables(report: dict[str, Any]) -> None:
    def error(row: dict) -> str:  # the last line of a worker's output says what went wrong
        lines = [line for line in str(row.get("error", "")).splitlines() if line.strip()]
        return lines[-1][:100] if lines else ""

    training = report["training"]
    if training:
        print(f"\n{'strategy':>8} {'crop':>5} {'batch/GPU':>9} {'GPUs':>4} {'step s':>8} {'img/s':>8} {'scaling':>8} {'peak GiB':>8} {'start s':>7}  error")
        for r in training:
            efficiency = f"{r['scaling_efficiency']:.0%}" if "scaling_efficiency" in r else "-"
            print(f"{r['strategy']:>8} {r['crop']:>5} {r['batch_per_gpu']:>9} {r['gpus']:>4} {cell(r.get('median_step_s'), 3):>8} "
                  f"{cell(r.get('images_per_s')):>8} {efficiency:>8} {cell(r.get('peak_gib'), 2):>8} {cell(r.get('startup_s')):>7}  {error(r)}")  # fmt: skip
    validated = [r for r in training if r.get("validation")]
    if validated:
        print(f"\n{'GPUs':>4} {'batch/GPU':>9} {'val s':>7} {'PQ':>7} {'mIoU':>7} {'AP':>7}")
        for r in validated:
            v, m = r["validation"], r["validation"]["metrics"]
            print(f"{r['gpus']:>4} {v['batch_per_gpu']:>9} {cell(v['seconds'], 2):>7} {cell(m.get('PQ'), 3):>7} {cell(m.get('mIoU'), 3):>7} {cell(m.get('AP'), 3):>7}")
    if report["sweeps"]:
        print(f"\n{'resources_per_trial':>22} {'wall s':>7} {'ended':>5} {'trials/h':>8} {'ASHA stops':>10} {'best PQ':>7}  error")
        for r in report["sweeps"]:
            print(f"{r['resources_per_trial']:>22} {cell(r.get('wall_s'), 0):>7} {cell(r.get('trials_ended')):>5} "
                  f"{cell(r.get('trials_per_hour')):>8} {cell(r.get('stopped_by_asha')):>10} {cell(r.get('best_PQ'), 2):>7}  {error(r)}")  # fmt: skip
    for case in report["skipped"]:
        print(f"skipped: {case}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--spec", type=Path, default=ROOT / "experiments" / "synthetic_swin_t.yaml")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "multi_gpu512", help="synthetic data folder (written when missing, then reused)")
    p.add_argument("--num-images", type=int, default=128, help="images of the synthetic set when written (half for validation)")
    p.add_argument("--size", type=int, default=512, help="image size of the synthetic set when written")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--gpus", type=int, nargs="+", default=[4, 1, 2], help="GPU counts of the DDP cases (FSDP: the largest)")
    p.add_argument("--crop", type=int, default=1024, help="training crop of the DDP/FSDP cases")
    p.add_argument("--batch", type=int, default=2, help="training images per GPU")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per case, after 3 warm-up steps")
    p.add_argument("--val-train-steps", type=int, default=40, help="training steps of the weights the validation scores")
    p.add_argument("--val-global-batch", type=int, default=8)
    p.add_argument("--sweep-resources", nargs="+", default=["{gpu: 4}", "{gpu: 1}", "{gpu: 0.5}", "{gpu: auto}"])
    p.add_argument("--sweep-epochs", type=int, default=4, help="automl.max_epochs of the sweeps")
    p.add_argument("--case-s", type=float, default=65.0, help="seconds planned per one-GPU training case, start-up included")
    p.add_argument("--startup-s-per-rank", type=float, default=20.0, help="seconds added to a training case's plan per GPU beyond the first (measured: 16 s per rank on 4 H200s)")
    p.add_argument("--sweep-s", type=float, default=75.0, help="the least running time of a sweep worth planning")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall time of the whole call, data included")
    p.add_argument("--override", nargs="*", default=[], help="extra dotted spec overrides for every run")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) / "multi_gpu.json" if os.environ.get("OUT") else ROOT / "benchmarks" / "results" / "multi_gpu.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--save", default="", help=argparse.SUPPRESS)
    p.add_argument("--validate", default="", help=argparse.SUPPRESS)
    p.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    args = parse_args(argv)
    args.spec, args.data = args.spec.resolve(), args.data.resolve()
    if args.worker:
        worker(args)
        return {}
    import torch

    data_s = make_data(args)
    plan = plan_cases(args, args.budget_s - (time.monotonic() - started))
    print("plan (case -> seconds): " + ", ".join(f"{case} -> {s:.0f}" for case, s in plan), flush=True)
    report: dict[str, Any] = {
        "spec": str(args.spec), "host": platform.node(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"], "nccl_env": NCCL_ENV,
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "overrides", "result", "save", "validate", "launched")},
        "data_s": data_s, "plan": plan, "training": [], "sweeps": [], "skipped": [],
    }  # fmt: skip
    deadline = time.monotonic() + sum(s for _, s in plan)
    with tempfile.TemporaryDirectory(prefix="multi_gpu_") as tmp:
        for index, (case, planned) in enumerate(plan):
            seconds = deadline - time.monotonic() - sum(s for _, s in plan[index + 1 :])  # planned plus what earlier cases left
            kind, _, value = case.partition(":")
            print(f"{case}: up to {seconds:.0f} s", flush=True)
            if seconds < planned / 2:
                report["skipped"].append(f"{case} (only {seconds:.0f} s left of the {planned:.0f} planned)")
            elif kind == "sweep":
                report["sweeps"].append(sweep_case(args, Path(tmp), seconds - STOP_S, value))
            else:
                report["training"].append(train_case(args, Path(tmp), seconds, int(value), kind, "validation" in args.parts))
                scaling(report["training"])
            report["wall_s"] = time.monotonic() - started
            write_json(report, args.out, quiet=True)
    report["skipped"] += [f"{case} (not in the plan: over the budget)" for case in wanted_cases(args) if case not in dict(plan)]
    print_tables(report)
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
