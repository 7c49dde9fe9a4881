"""Deployment benchmark: latency of every way to run one Mask2Former checkpoint, with the PQ of each beside it.

Variants (all run the same graph, `model.export.DeployableMask2Former`: normalisation, network, the mode's
post-processing, at one input size):

    torch-fp32       PyTorch eager, fp32, on --device
    torch-bf16       PyTorch eager under bfloat16 autocast, on --device
    aoti             torch.export + AOTInductor package (.pt2), compiled for --device
    ort-cpu          the ONNX file of `automl export` in ONNX Runtime's CPU provider
    ort-int8-cpu     that file after `automl quantize` (onnx backend, static QDQ), CPU provider
    torchao-int8wo   torchao int8 weight-only linear layers, eager, on --device
    torchao-int8dyn  torchao int8 weights and dynamically quantised activations, eager, on --device

For each variant and batch size it prints the median latency of --steps calls (after --warmup; CUDA synchronised)
and images/s, and the PQ (mIoU, AP) on the spec's dataset.val, measured the same way for every variant
(`automl.actions.predictors.predict_dataset`: letterboxed into the input size, outputs brought back to the
original size). Everything goes to JSON; a variant that fails is recorded with its error. Nothing is asserted.

    python benchmarks/deploy_latency.py -e experiments/synthetic_smoke.yaml --checkpoint CKPT.pth          # 544x960, batch 1 and 8
    python benchmarks/deploy_latency.py -e experiments/synthetic_smoke.yaml --checkpoint CKPT.pth \\
        --size 128 128 --batch 1 2 --steps 3 --warmup 1 --device cpu                                        # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from automl.actions.export import check_image, deployable, export_aoti, export_onnx, load_network  # noqa: E402
from automl.actions.predictors import AotiPredictor, OnnxPredictor, predict_dataset  # noqa: E402
from automl.actions.quantize import HEADLINE, quantize_onnx, torchao_quantize  # noqa: E402
from automl.spec import load_spec  # noqa: E402
from automl.training import build_datamodule, build_label_map  # noqa: E402
from model.evaluator import SegmentationEvaluator  # noqa: E402
from model.export import OUTPUT_NAMES  # noqa: E402

VARIANTS = ("torch-fp32", "torch-bf16", "aoti", "ort-cpu", "ort-int8-cpu", "torchao-int8wo", "torchao-int8dyn")


class GraphPredictor:
    """A PyTorch graph as a predictor (see automl.actions.predictors), eager, optionally under autocast."""

    def __init__(self, graph: torch.nn.Module, size: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32):
        self.graph, self.task, self.input_size, self.batch_size = graph.to(device).eval(), graph.task, tuple(size), None
        self.device, self.dtype = device, dtype

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            return dict(zip(OUTPUT_NAMES[self.task], self.graph(images.to(self.device))))


def build_variant(name: str, spec: Any, checkpoint: str, size: Sequence[int], device: torch.device, work: Path) -> Any:
    """The predictor of one variant (exports and quantises into `work`)."""
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


def score(spec: Any, predictor: Any) -> dict[str, float]:
    """The headline metrics of the predictor on dataset.val."""
    label_map = build_label_map(spec)
    dataset = build_datamodule(spec, label_map, with_train=False).val_set
    is_thing = label_map.is_thing_per_class(spec.model.sem_seg_head.num_classes)
    evaluator = SegmentationEvaluator(spec.model.mode, is_thing)
    for item, prediction in predict_dataset(predictor, dataset, 1, 0, is_thing):
        evaluator.update(prediction, dataset.ground_truth(item["indices"]))
    metrics = evaluator.compute()
    return {k: metrics[k] for k in HEADLINE[spec.model.mode] if k in metrics}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-e", "--spec", default=str(ROOT / "experiments" / "synthetic_smoke.yaml"), help="experiment spec (its dataset.val is scored)")
    p.add_argument("--checkpoint", required=True, help="checkpoint to deploy ('best', 'latest' or a file)")
    p.add_argument("overrides", nargs="*", help="dotted spec overrides")
    p.add_argument("--size", type=int, nargs=2, default=[544, 960], metavar=("H", "W"), help="input size of every variant")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes timed")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the PyTorch and AOTInductor variants")
    p.add_argument("--steps", type=int, default=20, help="timed calls per case")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per case before timing")
    p.add_argument("--no-score", action="store_true", help="skip the PQ evaluation")
    p.add_argument("--out", default=str(ROOT / "results" / "deploy_latency.json"), help="JSON file to write")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    spec = load_spec(args.spec, args.overrides, action="evaluate", need_checkpoint=False)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            row: dict[str, Any] = {"variant": name, "size": list(args.size)}
            try:
                predictor = build_variant(name, spec.copy(), args.checkpoint, args.size, device, Path(tmp))
                row["latency_ms"] = {}
                for batch in args.batch:
                    times = latency_ms(predictor, batch, args.size, args.steps, args.warmup, device)
                    row["latency_ms"][str(batch)] = {"median": statistics.median(times), "all": times}
                if not args.no_score:
                    row["metrics"] = score(spec, predictor)
            except Exception as err:  # a variant that cannot run here is recorded, the others go on
                row["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            rows.append(row)
            print_row(row, args.batch)
    result = {
        "rows": rows, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "checkpoint": args.checkpoint, "spec": args.spec, "batches": args.batch,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def print_row(row: dict[str, Any], batches: Sequence[int]) -> None:
    if "error" in row:
        print(f"| {row['variant']} | failed: {row['error'].splitlines()[0][:120]} |", flush=True)
        return
    cells = [f"{row['latency_ms'][str(b)]['median']:.1f} ms ({1000 * b / row['latency_ms'][str(b)]['median']:.1f} img/s)" for b in batches]
    metrics = ", ".join(f"{k} {v:.1f}" for k, v in row.get("metrics", {}).items())
    print(f"| {row['variant']} | " + " | ".join(cells) + f" | {metrics} |", flush=True)


if __name__ == "__main__":
    print("| variant | " + " | ".join(f"batch {b}" for b in parse_args(sys.argv[1:]).batch) + " | metrics |")
    main()
