"""Memory-aware packing: `automl.resources_per_trial: {gpu: auto}` gives each trial the GPU share it needs.

One short probe per sweep (a few training steps and one validation batch, at the spec's crop
size and batch, in a subprocess) measures the peak GPU memory of the largest network the search
space can draw (every architecture key at its largest value, so it bounds every trial); each
trial then asks Ray for that fraction of a GPU plus a safety margin, so as many trials share a
GPU as fit, and is held to it (`keep_to_share`). One probe rather than one per network shape:
each costs a process start and a model build, as much as a short trial, and it runs before any
trial, on an idle GPU. The probe's own allocator is capped too (a quarter of the GPU, then half, then
all of it; `probe_peak_memory`), so that it measures the trial's need rather than the free memory.
The share is kept in `<results_dir>/automl/<sweep>.gpu_shares.json` for
`--resume`. A trial that still runs out of GPU memory is re-queued with twice its share (up to a
whole GPU), and the sweep's later trials get that share too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from ray import tune

from automl.search.parameter import is_architecture
from automl.search.space import SearchSpace
from model.errors import UserError

log = logging.getLogger(__name__)
AUTO = "auto"
# Shares are multiples of this, so Ray's sums of fractions stay exact and trials pack evenly.
SHARE_STEP = 1 / 16
# Added to the measured peak: allocator fragmentation and batches larger than the probe's.
SAFETY_MARGIN = 0.2
# Memory a CUDA process holds outside PyTorch's allocator (context, kernels, cuDNN/cuBLAS workspaces).
CUDA_CONTEXT_BYTES = 600 * 2**20
PROBE_STEPS = 3
# The probe's allocator caps, tried in turn until the probe fits: see `probe_peak_memory`.
PROBE_CAPS = (0.25, 0.5, 1.0)
# Re-queues after an out-of-memory error: 1/16 doubles to a whole GPU in four.
OOM_REQUEUES = 4
SHARES_SUFFIX = ".gpu_shares.json"


class ProbeInterrupted(RuntimeError):
    """The probe process ended by a signal or Ctrl-C, not by what it measured."""


def wants_auto_gpu(spec: DictConfig) -> bool:
    return str(dict(spec.automl.resources_per_trial).get("gpu", "")).lower() == AUTO


def without_auto_gpu(spec: DictConfig) -> DictConfig:
    """The spec with `resources_per_trial.gpu: auto` taken out: the packer decides each trial's share (no GPU on CPU).
    Every other amount must be a number."""
    resources = {k: v for k, v in dict(spec.automl.resources_per_trial).items() if not (k == "gpu" and wants_auto_gpu(spec))}
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"automl.resources_per_trial.{key}: expected a number (or gpu: {AUTO}), got {value!r}")
    if len(resources) == len(spec.automl.resources_per_trial):
        return spec
    spec = spec.copy()
    spec.automl.resources_per_trial = resources
    return spec


def gpu_share(peak_bytes: int, total_bytes: int, margin: float = SAFETY_MARGIN, context_bytes: int = CUDA_CONTEXT_BYTES) -> float:
    """The GPU fraction for a trial whose allocator peaked at `peak_bytes`: peak plus context plus
    margin, rounded up to a multiple of SHARE_STEP, at most one GPU."""
    need = (peak_bytes + context_bytes) * (1 + margin) / total_bytes
    return min(1.0, max(SHARE_STEP, math.ceil(round(need / SHARE_STEP, 9)) * SHARE_STEP))


def larger_share(share: float) -> float:
    """The share after an out-of-memory error: twice as much, at most one GPU."""
    return min(1.0, math.ceil(round(2 * share / SHARE_STEP, 9)) * SHARE_STEP)


def trials_per_gpu(share: float) -> int:
    return int(round(1 / share, 9) // 1)


def keep_to_share(share: float) -> None:
    """Cap this trial process's PyTorch allocator at `share` of its GPU (a packed trial's measured share).

    Some allocations grow into whatever the GPU has free (cuDNN's FFT convolution workspaces):
    uncapped, a packed trial could take its neighbours' memory. Capped, PyTorch's cuDNN falls
    back to an algorithm whose workspace fits, and a trial that truly needs more fails with
    CUDA out-of-memory, which re-queues it with a larger share. Set for every trial, as a
    reused process may have held a different share before."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, share))


def is_cuda_oom(error_text: str) -> bool:
    return "OutOfMemoryError" in error_text or "CUDA out of memory" in error_text


def largest_network(space: SearchSpace) -> dict[str, int]:
    """Every architecture key of the space (layer counts, widths, queries) at its largest value:
    the network that needs the most memory of all the space can draw."""
    return {p.key: max(p.grid_values()) for p in space if is_architecture(p.key, p.kind)}


class GpuPacker(tune.Callback):
    """Each trial's resources (`resources`, for `tune.with_resources`) from the share the probe
    measured, and a bigger share after a trial ran out of GPU memory (a Tune callback).

    State lives in the shares file, because Tune holds its own copies of the trainable's resource
    function and of its callbacks.
    """

    def __init__(self, base_spec: Mapping[str, Any], space: SearchSpace, shares_file: Path, cpu: float, total_bytes: int):
        self.base_spec, self.space, self.shares_file = dict(base_spec), space, Path(shares_file)
        self.cpu, self.total_bytes = cpu, total_bytes

    def share(self) -> float:
        """The GPU share of every trial: probed at the first call, then read from the shares file."""
        shares = self._read()
        if "share" not in shares:
            probed = largest_network(self.space)
            try:
                peak = probe_peak_memory(self.base_spec, probed)
                shares = {"probed": probed, "peak_mib": round(peak / 2**20), "share": gpu_share(peak, self.total_bytes)}
            except ProbeInterrupted:  # Ctrl-C reaches the probe too: nothing learnt, nothing kept for --resume
                return 1.0
            except RuntimeError as err:  # e.g. the GPU is too full right now to probe: a whole GPU is safe
                log.warning("GPU packing: %s; every trial gets a whole GPU", err)
                shares = {"probed": probed, "peak_mib": None, "share": 1.0}
            self._write(shares)
            log.info("GPU packing: the largest network of the space %s peaked at %s MiB: %.4g of a GPU a trial (%d per GPU)",
                     probed, shares["peak_mib"], shares["share"], trials_per_gpu(shares["share"]))  # fmt: skip
        return shares["share"]

    def resources(self, config: dict) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory([{"CPU": self.cpu, "GPU": self.share()}])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial about to be retried: after an out-of-memory error, with twice its GPU share (and the trials after it)."""
        error = Path(trial.error_file).read_text(errors="replace") if trial.error_file and Path(trial.error_file).exists() else ""
        if not is_cuda_oom(error):
            return
        old = float(trial.placement_group_factory.required_resources.get("GPU", 0.0))
        new = larger_share(old)
        shares = self._read()
        self._write({**shares, "share": max(new, shares.get("share", 0.0))})
        trial.update_resources(tune.PlacementGroupFactory([{"CPU": self.cpu, "GPU": new}]))
        log.warning("trial %s ran out of GPU memory with %.4g of a GPU: re-queued with %.4g", trial.trial_id, old, new)

    def _read(self) -> dict:
        return json.loads(self.shares_file.read_text()) if self.shares_file.exists() else {}

    def _write(self, shares: dict) -> None:
        self.shares_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.shares_file.with_suffix(".partial")
        partial.write_text(json.dumps(shares, indent=2))
        os.replace(partial, self.shares_file)


def gpu_packer(spec: DictConfig, space: SearchSpace, sweep_root: Path, name: str) -> GpuPacker | None:
    """The packer for `{gpu: auto}` on a machine with GPUs; None elsewhere (on CPU the key means no GPU)."""
    import torch

    if not wants_auto_gpu(spec):
        return None
    if spec.train.num_gpus * spec.train.num_nodes > 1:
        raise UserError(
            f"automl.resources_per_trial.gpu: auto packs several trials on one GPU, but train.num_gpus = {spec.train.num_gpus} "
            "makes each trial span whole GPUs; give a number of GPUs instead"
        )
    if not torch.cuda.is_available():
        log.info("automl.resources_per_trial.gpu: auto on a machine without GPUs: every trial runs on CPU")
        return None
    cpu = float(dict(spec.automl.resources_per_trial).get("cpu", 1.0))
    total = torch.cuda.get_device_properties(0).total_memory
    return GpuPacker(OmegaConf.to_container(spec, resolve=True), space, sweep_root / f"{name}{SHARES_SUFFIX}", cpu, total)


def probe_peak_memory(base_spec: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    """Peak GPU memory (bytes reserved by PyTorch) of a few training steps and one validation batch of
    `config`, with the allocator capped at the first of PROBE_CAPS under which the probe fits.

    Uncapped on an idle GPU the probe would measure the free memory rather than the trial's need:
    cuDNN's float32 FFT convolution plans take workspaces as large as what is free (one of 33 GiB
    at 512x512, batch 8), and under a cap PyTorch falls back to a plan whose workspace fits, as a
    trial held to its share does (`keep_to_share`).
    """
    for cap in PROBE_CAPS[:-1]:
        try:
            return probe_memory(base_spec, config, cap=cap)["reserved"]
        except ProbeInterrupted:
            raise
        except RuntimeError as err:  # out of memory under this cap: try the next
            if not is_cuda_oom(str(err)):
                raise
    return probe_memory(base_spec, config, cap=PROBE_CAPS[-1])["reserved"]


def probe_memory(
    base_spec: Mapping[str, Any], config: Mapping[str, Any], steps: int = PROBE_STEPS, validate: bool = True,
    env: Mapping[str, str] | None = None, cap: float = 1.0,
) -> dict[str, int]:
    """Peak GPU memory, bytes {"allocated", "reserved"} by PyTorch, of `steps` training steps (and one
    validation batch) of `config`, in a fresh process so the caller holds no CUDA context; `env`
    is added to that process's environment (e.g. PYTORCH_CUDA_ALLOC_CONF); `cap`: the fraction of
    the GPU its allocator may take (`keep_to_share`)."""
    with tempfile.TemporaryDirectory(prefix="gpu_probe_") as directory:
        request = Path(directory) / "probe.json"
        request.write_text(json.dumps({"spec": base_spec, "config": dict(config), "out": directory, "steps": steps, "validate": validate, "cap": cap}))
        done = subprocess.run(
            [sys.executable, "-m", "automl.packing", str(request)], capture_output=True, text=True, env={**os.environ, **(env or {})}
        )
        if done.returncode < 0 or done.stderr.rstrip().endswith("KeyboardInterrupt"):
            raise ProbeInterrupted(f"GPU memory probe interrupted (exit {done.returncode})")
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"GPU memory probe failed ({lines[-1].strip() if lines else f'exit {done.returncode}'})")
        return json.loads((Path(directory) / "peak.json").read_text())


def _probe(request_file: str) -> None:
    """What the probe process runs."""
    import torch

    from automl.spec.load import apply_values
    from automl.training import run_training

    request = json.loads(Path(request_file).read_text())
    keep_to_share(request["cap"])
    spec = apply_values(request["spec"], {**request["config"], "train.results_dir": request["out"]})
    spec.train.resume_training_checkpoint_path = ""
    run_training(
        spec, progress=False, keep_checkpoints=False, max_epochs=1, limit_train_batches=request["steps"],
        limit_val_batches=1 if request["validate"] else 0, num_sanity_val_steps=0, logger=False,
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    peaks = {"allocated": torch.cuda.max_memory_allocated() if cuda else 0, "reserved": torch.cuda.max_memory_reserved() if cuda else 0}
    (Path(request["out"]) / "peak.json").write_text(json.dumps(peaks))


if __name__ == "__main__":
    _probe(sys.argv[1])
