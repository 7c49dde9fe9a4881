"""Multi-GPU benchmark: DDP/FSDP training scaling, sharded validation, and sweeps packed on one box of GPUs.

Three parts, each optional (`--parts`), all inside one wall-time budget (`--budget-s`):

    throughput  `--policy off` training at the same per-GPU batch on 1, 2, 4 GPUs (DDP and FSDP, each
                crop size): median step time after warm-up, images/s, scaling efficiency
                (images/s on N GPUs / (N x images/s on 1 GPU)) and peak memory of rank 0.
    validation  one checkpoint (trained briefly on one GPU) validated on 1 and on N GPUs at the same
                global batch: the metrics (sharded, merged exactly: they must agree) and the time.
    sweeps      `automl launch` for a fixed wall time per `automl.resources_per_trial` ({gpu: 4},
                {gpu: 1}, {gpu: 0.5}), then interrupted: trials ended per hour and best PQ, with
                per-GPU memory sampled (nvidia-smi) so a trial stopped by ASHA can be seen to free
                its GPUs before the next trial takes them.

Each measurement runs in its own process (Lightning relaunches it once per GPU); NCCL's NVLink
multicast stays off in every process started here, Ray's workers included (they inherit the
environment of the Ray instance the sweep starts). It prints a table and writes JSON.

    python benchmarks/multi_gpu.py --out $OUT/multi_gpu.json          # on a 4-GPU machine, ~9 min
    python benchmarks/multi_gpu.py --spec experiments/synthetic_smoke.yaml --data data/synthetic \\
        --gpus 1 2 --crops 128:2 --strategies ddp fsdp --sweep-resources cpu=1 --budget-s 300   # CPU check (gloo)
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

# NVLink multicast off (the device machines' rule), for this process and everything it starts.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NCCL_ENV)
WARMUP_STEPS = 3
VALIDATE_TRAIN_STEPS = 40  # steps of the one-GPU run whose checkpoint the validation part scores


# ---------------------------------------------------------------------------------------------
# workers: one measurement each, run as `multi_gpu.py --worker ...` (Lightning relaunches per GPU)
# ---------------------------------------------------------------------------------------------
def _worker_spec(args: argparse.Namespace):
    from automl.spec import load_spec

    return load_spec(args.spec, json.loads(args.overrides))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def worker_train(args: argparse.Namespace) -> None:
    """Train `--steps` timed steps after WARMUP_STEPS; rank 0 writes step times and peak memory."""
    import lightning.pytorch as pl
    import torch

    from automl.training import build_datamodule, build_label_map, build_module, seed_everything, trainer_settings

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *_: Any) -> None:
            _sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            _sync()
            self.times.append(time.perf_counter() - self.start)

    spec = _worker_spec(args)
    seed_everything(spec)
    label_map = build_label_map(spec)
    timer = StepTimer()
    settings = {**trainer_settings(spec), "max_steps": WARMUP_STEPS + args.steps, "limit_val_batches": 0, "enable_checkpointing": False}
    trainer = pl.Trainer(**settings, callbacks=[timer], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(build_module(spec, label_map), datamodule=build_datamodule(spec, label_map))
    if args.save:
        trainer.save_checkpoint(args.save)
    if trainer.is_global_zero:
        timed = timer.times[WARMUP_STEPS:]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        Path(args.result).write_text(json.dumps({"step_s": timed, "world": trainer.world_size, "peak_gib": peak}))


def worker_validate(args: argparse.Namespace) -> None:
    """Validate `--checkpoint` on the spec's devices; rank 0 writes the merged metrics and the time."""
    import lightning.pytorch as pl

    from automl.training import build_datamodule, build_label_map, build_module, trainer_settings
    from model.checkpoint import load_weights

    class ValidationTimer(pl.Callback):
        def on_validation_start(self, *_: Any) -> None:
            _sync()
            self.start = time.perf_counter()

        def on_validation_end(self, *_: Any) -> None:
            _sync()
            self.seconds = time.perf_counter() - self.start

    spec = _worker_spec(args)
    label_map = build_label_map(spec)
    module = build_module(spec, label_map)
    load_weights(module.model, args.checkpoint)
    timer = ValidationTimer()
    trainer = pl.Trainer(**trainer_settings(spec), callbacks=[timer], enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=build_datamodule(spec, label_map, with_train=False), verbose=False)
    if trainer.is_global_zero:
        Path(args.result).write_text(json.dumps({"seconds": timer.seconds, "world": trainer.world_size, "metrics": module.validation_metrics}))


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
class Budget:
    """The wall time left; a part or case that would not fit is recorded as skipped."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def data_overrides(data: Path | None) -> list[str]:
    """Point a synthetic spec's dataset at `data` (as `automl data synth` writes it)."""
    if data is None:
        return []
    overrides = [f"dataset.label_map={data / 'label_map.json'}"]
    for split in ("train", "val"):
        overrides += [
            f"dataset.{split}.img_dir={data / split / 'images'}",
            f"dataset.{split}.panoptic_json={data / split / 'annotations_panoptic.json'}",
            f"dataset.{split}.panoptic_dir={data / split / 'panoptic'}",
        ]
    return overrides


def run_worker(mode: str, args: argparse.Namespace, overrides: list[str], timeout: float, **extra: str) -> dict[str, Any]:
    """One measurement in a fresh process; its JSON result, or {'error': ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--spec", str(args.spec), "--overrides", json.dumps(overrides),
                   "--result", str(result), "--steps", str(args.steps), *(f"--{k}={v}" for k, v in extra.items())]
        started = time.monotonic()
        # Its own process group: on a timeout the ranks Lightning started go with it.
        worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ, **NCCL_ENV})
        try:
            output = worker.communicate(timeout=max(timeout, 1))[0]
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()
            return {"error": f"timed out after {timeout:.0f} s"}
        if worker.returncode != 0 or not result.exists():
            return {"error": output[-1500:]}
        return {**json.loads(result.read_text()), "process_s": time.monotonic() - started}


def common_overrides(args: argparse.Namespace, results: Path) -> list[str]:
    return [*data_overrides(args.data), f"results_dir={results}", "train.seed=0", *args.override]


def part_throughput(args: argparse.Namespace, budget: Budget, work: Path) -> list[dict[str, Any]]:
    rows = []
    cases = [(strategy, crop, batch, gpus) for strategy in args.strategies for crop, batch in args.crops for gpus in args.gpus]
    for index, (strategy, crop, batch, gpus) in enumerate(cases):
        row = {"strategy": strategy, "crop": crop, "batch_per_gpu": batch, "gpus": gpus}
        share = budget.left() / max(len(cases) - index, 1)
        if share < 20:
            rows.append({**row, "error": "skipped: out of time budget"})
            continue
        overrides = [
            *common_overrides(args, work / f"{strategy}_{crop}_{gpus}"), f"train.num_gpus={gpus}", f"train.gpu_ids={list(range(gpus))}",
            f"train.distributed_strategy={strategy}", f"dataset.augmentation.train_crop_size=[{crop},{crop}]",
            f"dataset.train.batch_size={batch}", "train.num_epochs=1000",
        ]
        measured = run_worker("train", args, overrides, share)
        if "step_s" in measured and measured["step_s"]:
            median = statistics.median(measured["step_s"])
            measured.update(median_step_s=median, images_per_s=batch * gpus / median)
        rows.append({**row, **{k: v for k, v in measured.items() if k != "step_s"}, "step_s": measured.get("step_s")})
    for row in rows:  # scaling efficiency against the same strategy and crop on one GPU
        base = next((r for r in rows if (r["strategy"], r["crop"], r["gpus"]) == (row["strategy"], row["crop"], 1) and "images_per_s" in r), None)
        if base and "images_per_s" in row:
            row["scaling_efficiency"] = row["images_per_s"] / (row["gpus"] * base["images_per_s"])
    return rows


def part_validation(args: argparse.Namespace, budget: Budget, work: Path) -> list[dict[str, Any]]:
    """Train briefly on one GPU, then score that checkpoint on 1 and on max(--gpus) GPUs at one global batch."""
    checkpoint = work / "validation.ckpt"
    crop, batch = args.crops[-1]
    train_overrides = [*common_overrides(args, work / "validation_train"), "train.num_gpus=1", "train.gpu_ids=[0]",
                       f"dataset.augmentation.train_crop_size=[{crop},{crop}]", f"dataset.train.batch_size={batch}", "train.num_epochs=1000"]
    saved = run_worker("train", argparse.Namespace(**{**vars(args), "steps": VALIDATE_TRAIN_STEPS}), train_overrides, budget.left() * 0.5, save=str(checkpoint))
    if "error" in saved:
        return [{"gpus": 1, "error": f"training the checkpoint failed: {saved['error']}"}]
    rows = []
    for gpus in sorted({1, max(args.gpus)}):
        overrides = [*common_overrides(args, work / f"validation_{gpus}"), f"train.num_gpus={gpus}", f"train.gpu_ids={list(range(gpus))}",
                     f"dataset.val.batch_size={max(args.val_global_batch // gpus, 1)}"]
        rows.append({"gpus": gpus, "global_batch": args.val_global_batch, **run_worker("validate", args, overrides, budget.left() * 0.5, checkpoint=str(checkpoint))})
    return rows


class GpuMemorySampler:
    """Per-GPU used memory (MiB) from nvidia-smi every `interval` seconds, in a thread."""

    def __init__(self, interval: float = 1.0):
        self.samples: list[tuple[float, list[int]]] = []
        self.interval, self.stopped = interval, threading.Event()
        self.available = shutil.which("nvidia-smi") is not None
        if self.available:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if out.returncode == 0:
                self.samples.append((time.time(), [int(v) for v in out.stdout.split()]))

    def stop(self) -> None:
        self.stopped.set()

    def between(self, start: float, end: float) -> list[list[int]]:
        return [mem for t, mem in self.samples if start <= t <= end]


def part_sweeps(args: argparse.Namespace, budget: Budget, work: Path) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    rows = []
    for index, resources in enumerate(args.sweep_resources):
        seconds = budget.left() / max(len(args.sweep_resources) - index, 1) - 20  # 20 s to stop and read back
        row: dict[str, Any] = {"resources_per_trial": resources}
        if seconds < 30:
            rows.append({**row, "error": "skipped: out of time budget"})
            continue
        results = work / f"sweep_{index}"
        crop, batch = args.crops[-1]
        overrides = [
            *common_overrides(args, results), "automl.policy=on", f"automl.resources_per_trial={json.dumps(resources)}",
            "automl.num_samples=1000", "automl.max_concurrent=0", "automl.scheduler=asha", f"automl.max_epochs={args.sweep_epochs}",
            "automl.grace_period=1", "automl.reduction_factor=2", "train.validation_interval=1",
            f"dataset.augmentation.train_crop_size=[{crop},{crop}]", f"dataset.train.batch_size={batch}",
            "dataset.train.num_workers=2", "dataset.val.num_workers=2",  # up to eight trials share the CPU cores
        ]
        sampler = GpuMemorySampler()
        started = time.time()
        sweep = subprocess.Popen([sys.executable, "-m", "automl.cli", "launch", "-e", str(args.spec), *overrides],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ, **NCCL_ENV})
        try:
            output = sweep.communicate(timeout=seconds)[0]
        except subprocess.TimeoutExpired:
            os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C: the sweep saves its state and ends its runs
            try:
                output = sweep.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired:
                os.killpg(sweep.pid, signal.SIGKILL)
                output = sweep.communicate()[0]
        elapsed = time.time() - started
        time.sleep(5)  # memory once every process is gone
        sampler.stop()
        row.update(wall_s=elapsed, exit_code=sweep.returncode)
        db = results / "mlflow.db"
        if not db.exists():
            rows.append({**row, "error": output[-1500:]})
            continue
        client = MlflowClient(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name(Path(args.spec).stem)
        runs = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''") if experiment else []
        ended = [r for r in runs if r.info.end_time and r.info.status in ("FINISHED", "FAILED")]
        best = [max(m.value for m in history) for r in runs if (history := client.get_metric_history(r.info.run_id, "PQ"))]
        row.update(trials_started=len(runs), trials_ended=len(ended), trials_per_hour=len(ended) / elapsed * 3600, best_PQ=max(best) if best else None,
                   stopped_by_asha=sum(r.data.tags.get("status") == "stopped" for r in runs))
        if sampler.available:  # GPU memory shortly after each ASHA stop, and after the sweep ended
            stops = sorted(r.info.end_time / 1000 for r in runs if r.data.tags.get("status") == "stopped")
            next_starts = sorted(r.info.start_time / 1000 for r in runs)
            row["after_asha_stop"] = [
                {"stop_s": stop - started, "next_trial_start_s": next((s - started for s in next_starts if s > stop), None),
                 "mib_per_gpu_1_to_5_s_after": sampler.between(stop + 1, stop + 5)}
                for stop in stops
            ]
            row["mib_per_gpu_after_sweep"] = sampler.samples[-1][1] if sampler.samples else None
        rows.append(row)
    return rows


def print_tables(report: dict[str, Any]) -> None:
    def error(row: dict) -> str:  # the last line of a worker's output says what went wrong
        lines = [line for line in str(row.get("error", "")).splitlines() if line.strip()]
        return lines[-1][:100] if lines else ""

    def fmt(value: Any, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)

    if report.get("throughput"):
        print(f"{'strategy':>8} {'crop':>5} {'batch/GPU':>9} {'GPUs':>4} {'step s':>8} {'img/s':>8} {'scaling':>8} {'peak GiB':>8}  error")
        for r in report["throughput"]:
            print(f"{r['strategy']:>8} {r['crop']:>5} {r['batch_per_gpu']:>9} {r['gpus']:>4} {fmt(r.get('median_step_s'), '.3f'):>8} "
                  f"{fmt(r.get('images_per_s'), '.1f'):>8} {fmt(r.get('scaling_efficiency'), '.0%'):>8} {fmt(r.get('peak_gib')):>8}  {error(r)}")
    if report.get("validation"):
        print(f"\n{'GPUs':>4} {'global batch':>12} {'val s':>7} {'PQ':>7} {'mIoU':>7} {'AP':>7}  error")
        for r in report["validation"]:
            m = r.get("metrics", {})
            print(f"{r['gpus']:>4} {fmt(r.get('global_batch')):>12} {fmt(r.get('seconds')):>7} {fmt(m.get('PQ')):>7} {fmt(m.get('mIoU')):>7} {fmt(m.get('AP')):>7}  {error(r)}")
    if report.get("sweeps"):
        print(f"\n{'resources_per_trial':>22} {'wall s':>7} {'ended':>5} {'trials/h':>8} {'ASHA stops':>10} {'best PQ':>7}  error")
        for r in report["sweeps"]:
            print(f"{json.dumps(r['resources_per_trial']):>22} {fmt(r.get('wall_s'), '.0f'):>7} {fmt(r.get('trials_ended')):>5} "
                  f"{fmt(r.get('trials_per_hour'), '.1f'):>8} {fmt(r.get('stopped_by_asha')):>10} {fmt(r.get('best_PQ')):>7}  {error(r)}")


def parse_crop(text: str) -> tuple[int, int]:
    size, _, batch = text.partition(":")
    return int(size), int(batch or 1)


def parse_resources(text: str) -> dict[str, float]:
    return {key: float(value) for key, value in (item.split("=") for item in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "experiments" / "synthetic_swin_t.yaml")
    parser.add_argument("--data", type=Path, default=None, help="A synthetic dataset folder (default: the spec's paths).")
    parser.add_argument("--parts", nargs="+", default=["throughput", "validation", "sweeps"], choices=["throughput", "validation", "sweeps"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    parser.add_argument("--crops", type=parse_crop, nargs="+", default=[(1024, 2), (512, 8)], help="crop:batch-per-GPU pairs.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per case (after warm-up).")
    parser.add_argument("--val-global-batch", type=int, default=8)
    parser.add_argument("--sweep-resources", type=parse_resources, nargs="+", default=[{"gpu": 4.0}, {"gpu": 1.0}, {"gpu": 0.5}], help="e.g. gpu=4 gpu=1 gpu=0.5,cpu=2")
    parser.add_argument("--sweep-epochs", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=540.0, help="Wall time for everything.")
    parser.add_argument("--throughput-share", type=float, default=0.55, help="Fraction of the budget the throughput part may use.")
    parser.add_argument("--override", nargs="*", default=[], help="Extra dotted spec overrides for every run.")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: $OUT/multi_gpu.json, else benchmarks/results/multi_gpu.json).")
    parser.add_argument("--worker", choices=["train", "validate"], help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.spec = args.spec.resolve()
    if args.worker:
        (worker_train if args.worker == "train" else worker_validate)(args)
        return

    import torch

    budget = Budget(args.budget_s)
    shares = {"throughput": args.throughput_share, "validation": 0.4, "sweeps": 1.0}  # of the time left when the part starts
    report: dict[str, Any] = {
        "spec": str(args.spec), "host": platform.node(), "torch": torch.__version__,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
        "nccl_env": NCCL_ENV, "args": {k: v for k, v in vars(args).items() if k not in ("worker", "overrides", "result", "save", "checkpoint")},
    }
    with tempfile.TemporaryDirectory(prefix="multi_gpu_") as tmp:
        for part in args.parts:
            started = time.monotonic()
            part_budget = Budget(budget.left() * shares[part] if part != args.parts[-1] else budget.left())
            report[part] = {"throughput": part_throughput, "validation": part_validation, "sweeps": part_sweeps}[part](args, part_budget, Path(tmp))
            report[f"{part}_wall_s"] = time.monotonic() - started
    print_tables(report)
    out = args.out or (Path(os.environ["OUT"]) / "multi_gpu.json" if os.environ.get("OUT") else ROOT / "benchmarks" / "results" / "multi_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
