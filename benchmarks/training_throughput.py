"""Images/s, GPU-busy fraction and data-loading wait of a real training run.

Runs `automl.training.run_training`, the training loop that `automl launch --policy off` runs
(Lightning, the spec's data loaders and precision), with a callback that times every training
epoch and a thread that samples NVML's GPU utilisation (the share of each sample period in
which a kernel was running) every 50 ms. The first `--skip-epochs` epochs (start-up, cuDNN
plans, Triton compilation) are left out; validation falls between epochs and is left out too.
Between batches is the host time from one training batch's end to the next one's start (with a GPU-bound
step it includes waiting for the GPU at a sync point there); loader wait is the part of it spent inside
the training DataLoader's `__next__`, the loop waiting for its data. With
--profile-steps N, N training steps of the last epoch also run under torch.profiler (their
epoch is left out of the rates): kernels and GPU-busy ms per step, the top kernels, the host's
waits for the GPU and the top host operators (benchmarks._common.profile_summary).

    python benchmarks/training_throughput.py -e experiments/synthetic_swin_t.yaml train.num_epochs=4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automl.host import usable_cores  # noqa: E402
from automl.spec import load_spec  # noqa: E402
from automl.training import run_training  # noqa: E402
from benchmarks._common import profile_summary, write_json  # noqa: E402


class LoaderClock:
    """Host seconds spent in `__next__` of the iterators over `dataset` while `running` (patched for the process)."""

    def __init__(self) -> None:
        self.seconds, self.running, self.dataset = 0.0, False, None
        original = torch.utils.data.dataloader._BaseDataLoaderIter.__next__

        def timed_next(iterator):
            started = time.perf_counter()
            try:
                return original(iterator)
            finally:
                if self.running and iterator._dataset is self.dataset:  # not the validation loader's
                    self.seconds += time.perf_counter() - started

        torch.utils.data.dataloader._BaseDataLoaderIter.__next__ = timed_next


class EpochTimer(pl.Callback):
    """Wall time, images, time between batches and loader wait of every training epoch (the GPU drained at each epoch end)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._last_end: float | None = None
        self.loader = LoaderClock()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epochs.append({"start": time.perf_counter(), "images": 0, "steps": 0, "between_batches_s": 0.0})
        self._last_end = None
        self.loader.seconds, self.loader.dataset = 0.0, getattr(trainer.train_dataloader, "dataset", None)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.loader.running = False  # the loader is timed between batches only (not the epoch's first fetch)
        if self._last_end is not None:
            self.epochs[-1]["between_batches_s"] += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.epochs[-1]["images"] += batch["images"].shape[0]
        self.epochs[-1]["steps"] += 1
        self._last_end = time.perf_counter()
        self.loader.running = True

    def on_train_epoch_end(self, trainer, module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.epochs[-1]["end"] = time.perf_counter()
        self.epochs[-1]["loader_wait_s"], self.loader.running = self.loader.seconds, False  # with the end-of-epoch StopIteration


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepProfiler(pl.Callback):
    """torch.profiler over `steps` training steps of the last epoch, from its batch FIRST on."""

    FIRST = 2  # the epoch's first batches wait for the loader workers to fill their queues

    def __init__(self, steps: int) -> None:
        self.steps, self.summary, self._prof, self._start = steps, None, None, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self._prof is None and self.summary is None and trainer.current_epoch == trainer.max_epochs - 1 and batch_idx == self.FIRST:
            from torch.profiler import ProfilerActivity, profile

            _sync()
            self._prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
            self._prof.__enter__()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._prof is not None and batch_idx - self.FIRST + 1 == self.steps:
            _sync()
            wall = time.perf_counter() - self._start
            self._prof.__exit__(None, None, None)
            self.summary, self._prof = profile_summary(self._prof, self.steps, wall, top=15), None


class UtilisationSampler(threading.Thread):
    """NVML GPU utilisation (percent) every `period_s`, with host timestamps."""

    def __init__(self, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period_s, self.samples, self._stop_event = period_s, [], threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter(), torch.cuda.utilization()))
            time.sleep(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-e", "--experiment-spec", required=True)
    p.add_argument("overrides", nargs="*", help="dotted spec overrides")
    p.add_argument("--skip-epochs", type=int, default=1)
    p.add_argument("--profile-steps", type=int, default=0, help="profile this many steps of the last epoch (0: none)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_throughput.json"))
    args = p.parse_args(argv)
    spec = load_spec(args.experiment_spec, args.overrides, action="train")
    timer = EpochTimer()
    profiler = StepProfiler(args.profile_steps) if args.profile_steps else None
    sampler = UtilisationSampler() if torch.cuda.is_available() else None
    if sampler:
        sampler.start()
    try:
        run_training(spec, callbacks=[timer, *([profiler] if profiler else [])], progress=False, keep_checkpoints=False)
    finally:
        if sampler:
            sampler.stop()
    measured = [e for e in timer.epochs[args.skip_epochs : len(timer.epochs) - (profiler is not None)] if "end" in e]
    if not measured:
        raise SystemExit(f"no epoch after the first {args.skip_epochs} was measured: raise train.num_epochs")
    wall = sum(e["end"] - e["start"] for e in measured)
    images = sum(e["images"] for e in measured)
    steps = sum(e["steps"] for e in measured)
    inside = [u for t, u in (sampler.samples if sampler else []) if any(e["start"] <= t <= e["end"] for e in measured)]
    result = {
        "benchmark": "training_throughput",
        "spec": args.experiment_spec,
        "overrides": args.overrides,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "epochs_measured": len(measured),
        "images_per_s": images / wall,
        "step_ms": wall / steps * 1e3,
        "between_batches_ms_per_step": sum(e["between_batches_s"] for e in measured) / steps * 1e3,
        "loader_wait_ms_per_step": sum(e["loader_wait_s"] for e in measured) / steps * 1e3,
        "gpu_busy_percent": statistics.fmean(inside) if inside else None,
        "gpu_busy_samples": len(inside),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "cores_usable": usable_cores(),
        "profile": profiler.summary if profiler else None,
        "epochs": [{k: v for k, v in e.items() if k not in ("start", "end")} | {"wall_s": e["end"] - e["start"]} for e in measured],
    }
    print(
        f"{result['gpu']}: {result['images_per_s']:.1f} images/s, {result['step_ms']:.0f} ms/step, between batches "
        f"{result['between_batches_ms_per_step']:.1f} ms/step of which loader wait {result['loader_wait_ms_per_step']:.1f}, "
        f"GPU busy {result['gpu_busy_percent']}% over {len(measured)} epochs"
    )
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
