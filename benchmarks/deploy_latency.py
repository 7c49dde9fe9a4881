"""Deployment benchmark: latency of every way to run one Mask2Former checkpoint, with the PQ of each beside it.

Variants (all run the same graph, `model.export.DeployableMask2Former`: normalisation, network, the mode's
post-processing, at one input size), timed in this order, AOTInductor last:

    torch-fp32       PyTorch eager, fp32, on --device
    torch-bf16       PyTorch eager under bfloat16 autocast, on --device
    torchao-int8wo   torchao int8 weight-only linear layers (`automl quantize` backend torchao), eager, on --device
    torchao-int8dyn  torchao int8 weights and dynamically quantised int8 activations, eager, on --device
    ort-cpu          the ONNX file of `automl export` in ONNX Runtime's CPU provider (all of this machine's cores)
    ort-int8-cpu     that file after `automl quantize` (backend onnx, static QDQ, calibrated on dataset.val), CPU provider
    aoti             torch.export + AOTInductor package (.pt2) compiled for --device, in a process of its own limited
                     to --aoti-s (a compile that does not finish in time is recorded as skipped)

The checkpoint: --checkpoint, or --train-epochs N (`automl launch --policy off` on the spec and --data first; a second
call with the same --work reuses it), or --untrained (random weights: latency only). Per variant and batch size: the
median of --steps calls after --warmup (CUDA synchronised; --cpu-steps/--cpu-warmup for the CPU-provider rows), and
the validation metrics through the platform's evaluate (`automl.actions.evaluate.evaluate_predictor`: every image
letterboxed into the input size). The JSON is rewritten after every row, so a call cut short keeps what it measured;
a variant that fails or cannot run here (torchao not installed) is recorded with why, and the others go on.

    python benchmarks/deploy_latency.py --train-epochs 6 --out $OUT/deploy_latency.json              # one H100
    python benchmarks/deploy_latency.py --untrained --device cpu --variants ort-cpu ort-int8-cpu \\
        --note "shared 2-core machine" --out benchmarks/results/cpu2_deploy_latency.json               # ORT rows on a CPU box
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from automl.actions.evaluate import evaluate_predictor, resolve_checkpoint  # noqa: E402
from automl.actions.export import check_image, deployable, export_aoti, export_onnx, load_network  # noqa: E402
from automl.actions.predictors import AotiPredictor, OnnxPredictor  # noqa: E402
from automl.actions.quantize import HEADLINE, quantize_onnx, torchao_quantize  # noqa: E402
from automl.host import usable_cores  # noqa: E402
from automl.spec import load_spec  # noqa: E402
from automl.spec.model_args import build_network  # noqa: E402
from automl.synthetic_data import data_overrides  # noqa: E402
from automl.training import seed_everything  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.export import OUTPUT_NAMES  # noqa: E402

VARIANTS = ("torch-fp32", "torch-bf16", "torchao-int8wo", "torchao-int8dyn", "ort-cpu", "ort-int8-cpu", "aoti")
CPU_VARIANTS = ("ort-cpu", "ort-int8-cpu")  # ONNX Runtime's CPU provider, whatever --device is


class GraphPredictor:
    """A PyTorch graph as a predictor (see automl.actions.predictors), eager, optionally under autocast."""

    def __init__(self, graph: torch.nn.Module, size: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32):
        self.graph, self.task, self.input_size, self.batch_size = graph.to(device).eval(), graph.task, tuple(size), None
        self.device, self.dtype = device, dtype

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            return dict(zip(OUTPUT_NAMES[self.task], self.graph(images.to(self.device))))


def build_variant(name: str, spec: Any, checkpoint: str, size: Sequence[int], device: torch.device, work: Path) -> Any:
    """The predictor of one variant (exports and quantises into `work`, reusing the ONNX file of an earlier variant)."""
    spec, network = load_network(spec, checkpoint)
    graph = deployable(spec, network)
    example = check_image(spec, size)[0].expand(2, -1, -1, -1).contiguous()  # a dynamic batch is traced with 2 images
    onnx_file = work / "model.onnx"
    if name == "torch-fp32":
        return GraphPredictor(graph, size, device)
    if name == "torch-bf16":
        return GraphPredictor(graph, size, device, torch.bfloat16)
    if name in ("torchao-int8wo", "torchao-int8dyn"):
        torchao_quantize(network, "weight_only_ptq" if name == "torchao-int8wo" else "dynamic_ptq")
        return GraphPredictor(graph, size, device)
    if name == "aoti":
        export_aoti(graph.to(device), example.to(device), work / "model.pt2", dynamic_batch=True)
        return AotiPredictor(work / "model.pt2")
    if not onnx_file.exists():
        export_onnx(graph, example, onnx_file, opset=17, dynamic_batch=True)
    if name == "ort-cpu":
        return OnnxPredictor(onnx_file, providers=["CPUExecutionProvider"])
    spec.quantize.update({"backend": "onnx", "mode": "static_ptq", "model_path": str(onnx_file)})
    spec.dataset.quant_calibration_dataset.images_dir = spec.dataset.quant_calibration_dataset.images_dir or spec.dataset.val.img_dir
    _, quantized = quantize_onnx(spec, work)
    return OnnxPredictor(quantized, providers=["CPUExecutionProvider"])


def latency_ms(predictor: Any, batch: int, size: Sequence[int], steps: int, warmup: int, device: torch.device) -> list[float]:
    images = torch.rand(batch, 3, *size) * 255
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return times


def measure(name: str, spec: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One row: latency per batch size and the headline metrics, or why the variant did not run."""
    row: dict[str, Any] = {"variant": name, "size": list(args.size)}
    if name.startswith("torchao") and importlib.util.find_spec("torchao") is None:
        return {**row, "skipped": "torchao does not import here (pip install torchao==0.18.0, as pyproject pins it)"}
    on_cpu = name in CPU_VARIANTS
    device = torch.device("cpu" if on_cpu else args.device)
    row["runs_on"] = f"cpu ({usable_cores()} cores)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    started = time.monotonic()
    try:
        predictor = build_variant(name, spec.copy(), args.checkpoint, args.size, device, work)
        row["build_s"] = time.monotonic() - started
        row["latency_ms"] = {}
        for batch in args.batch:
            steps, warmup = (args.cpu_steps, args.cpu_warmup) if on_cpu else (args.steps, args.warmup)
            times = latency_ms(predictor, batch, args.size, steps, warmup, device)
            row["latency_ms"][str(batch)] = {"median": statistics.median(times), "all": times}
        if not args.no_score:
            metrics = evaluate_predictor(spec, predictor, batch_size=max(args.batch))
            row["metrics"] = {k: metrics[k] for k in HEADLINE[spec.model.mode] if k in metrics}
    except Exception as err:  # a variant that cannot run here is recorded, the others go on
        row["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    row["wall_s"] = time.monotonic() - started
    return row


def measure_aoti(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """The aoti row from a process of its own, so that a compile past `seconds` can be cut without losing the other rows."""
    row: dict[str, Any] = {"variant": "aoti", "size": list(args.size)}
    if seconds < 30:
        return {**row, "skipped": f"only {seconds:.0f} s of the budget left"}
    out = args.work / "aoti_row.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "-e", args.spec, "--checkpoint", args.checkpoint, "--variants", "aoti",
               "--device", args.device, "--work", str(args.work), "--size", *map(str, args.size), "--batch", *map(str, args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out), *(["--no-score"] if args.no_score else []),
               *args.overrides]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True)  # its own group: the compile workers go with it
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return {**row, "skipped": f"the AOTInductor compile and run did not finish in {seconds:.0f} s (--aoti-s)"}
    if out.exists():
        return json.loads(out.read_text())["rows"][0]
    return {**row, "error": f"its process ended with return code {process.returncode} and wrote no row (see the output above)"}


def make_checkpoint(args: argparse.Namespace) -> str:
    """--checkpoint, else a model trained by the platform for --train-epochs (reused when there), else random weights."""
    if args.checkpoint:
        return args.checkpoint
    results = args.work / ("untrained" if args.untrained else f"trained_{args.train_epochs}_epochs")
    spec = load_spec(args.spec, [f"results_dir={results}", *args.overrides], action="evaluate", need_checkpoint=False)
    if args.untrained:
        seed_everything(spec)
        network = build_network(spec.model)
        path = results / "untrained.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {f"model.{k}": v for k, v in network.state_dict().items()}, "spec": OmegaConf.to_container(spec, resolve=True)}, path)
        return str(path)
    try:
        return str(resolve_checkpoint(spec, "best"))  # trained by an earlier call
    except UserError:
        pass
    command = [sys.executable, "-m", "automl.cli", "launch", "-e", args.spec, "--policy", "off", f"results_dir={results}",
               f"train.num_epochs={args.train_epochs}", f"train.validation_interval={args.train_epochs}", f"train.checkpoint_interval={args.train_epochs}",
               *args.overrides]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(command, check=True, env=env)
    return str(resolve_checkpoint(spec, "best"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-e", "--spec", default=str(ROOT / "experiments" / "synthetic_swin_t.yaml"), help="experiment spec (its dataset.val is scored)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint to deploy ('best', 'latest' or a file)")
    source.add_argument("--train-epochs", type=int, help="train one first: `automl launch --policy off` for this many epochs")
    source.add_argument("--untrained", action="store_true", help="random weights (latency only; nothing is scored)")
    p.add_argument("overrides", nargs="*", help="dotted spec overrides")
    p.add_argument("--data", type=Path, default=None, help="synthetic data folder for the spec (written when missing; default: the spec's own paths)")
    p.add_argument("--num-images", type=int, default=120, help="images of the synthetic set when written (a fifth for validation)")
    p.add_argument("--image-size", type=int, default=512, help="image size of the synthetic set when written")
    p.add_argument("--size", type=int, nargs=2, default=[544, 960], metavar=("H", "W"), help="input size of every variant")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes timed")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the PyTorch and AOTInductor variants")
    p.add_argument("--steps", type=int, default=20, help="timed calls per case")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per case before timing")
    p.add_argument("--cpu-steps", type=int, default=3, help="timed calls per case of the ONNX Runtime CPU rows")
    p.add_argument("--cpu-warmup", type=int, default=1, help="untimed calls per case of the ONNX Runtime CPU rows")
    p.add_argument("--no-score", action="store_true", help="skip the PQ evaluation")
    p.add_argument("--budget-s", type=float, default=230.0, help="wall time of the call; the rows that do not fit are recorded as skipped")
    p.add_argument("--aoti-s", type=float, default=150.0, help="at most this long for the AOTInductor row (compile included)")
    p.add_argument("--note", default="", help="a note stored with the results (e.g. that other jobs shared the machine)")
    p.add_argument("--work", type=Path, default=ROOT / "results" / "deploy_latency", help="trained checkpoint, exports and quantised files")
    p.add_argument("--out", default=str(ROOT / "results" / "deploy_latency.json"), help="JSON file to write")
    args = p.parse_args(argv)
    args.no_score = args.no_score or args.untrained
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the export's phase times
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)  # exports and quantised files go here, also with --checkpoint
    data: list[str] = []
    if args.data:
        data = data_overrides(args.data.resolve())
        if not (args.data / "label_map.json").exists():
            from model.data import write_synthetic_dataset

            write_synthetic_dataset(args.data, num_images=args.num_images, size=(args.image_size, args.image_size), seed=0, val_fraction=0.2)
    args.overrides = [*data, *args.overrides]
    args.checkpoint = make_checkpoint(args)
    spec = load_spec(args.spec, [f"results_dir={args.work}", *args.overrides], action="evaluate", need_checkpoint=False)
    result: dict[str, Any] = {
        "machine": platform.node(), "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "cores_usable": usable_cores(), "torch": torch.__version__, "checkpoint": args.checkpoint, "spec": args.spec, "size": args.size,
        "batches": args.batch, "note": args.note, "rows": [],
    }  # fmt: skip
    print("| variant | " + " | ".join(f"batch {b}" for b in args.batch) + " | metrics |", flush=True)
    for name in args.variants:
        left = args.budget_s - (time.monotonic() - started)
        if name == "aoti" and args.variants != ["aoti"]:
            row = measure_aoti(args, min(args.aoti_s, left))
        elif left < 10:
            row = {"variant": name, "skipped": "out of the time budget (--budget-s)"}
        else:
            row = measure(name, spec, args, args.work)
        result["rows"].append(row)
        print_row(row, args.batch)
        write_json(result, args.out, quiet=True)
    write_json(result, args.out)
    return result


def print_row(row: dict[str, Any], batches: Sequence[int]) -> None:
    if "latency_ms" not in row or "error" in row or "skipped" in row:
        why = row.get("error") or row.get("skipped", "")
        print(f"| {row['variant']} | {'failed' if 'error' in row else 'skipped'}: {why.splitlines()[0][:120] if why else ''} |", flush=True)
        return
    cells = [f"{row['latency_ms'][str(b)]['median']:.1f} ms ({1000 * b / row['latency_ms'][str(b)]['median']:.1f} img/s)" for b in batches]
    metrics = ", ".join(f"{k} {v:.1f}" for k, v in row.get("metrics", {}).items())
    print(f"| {row['variant']} | " + " | ".join(cells) + f" | {metrics} |", flush=True)


if __name__ == "__main__":
    main()
