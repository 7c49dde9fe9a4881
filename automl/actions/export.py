"""`automl export`: a checkpoint -> a plugin-free ONNX file or an AOTInductor package, checked against PyTorch.

The graph is `model.export.DeployableMask2Former` (normalisation, network, the task's post-processing),
traced on the CPU, where multi-scale deformable attention runs its `grid_sample` reference, so every
ONNX node is a standard one (ONNX Runtime and TensorRT >= 8.6 need no plugin). After writing the file
the action runs it on a real validation image and compares every output with PyTorch; beyond
PARITY_TOLERANCE it fails. The report is written beside the file as `<name>.parity.json`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from automl.actions.evaluate import resolve_checkpoint, spec_for_checkpoint
from automl.actions.predictors import onnx_session
from automl.actions.quantize import prepare_for_checkpoint
from automl.spec.model_args import build_network, build_split_dataset, data_cache_dir
from automl.training import build_label_map
from model.checkpoint import load_weights, read_checkpoint
from model.data import resolve_dir
from model.data.image_folder import ImageFolderDataset
from model.data.transforms import ResizeShortestEdge
from model.errors import UserError
from model.export import INPUT_NAME, OUTPUT_NAMES, DeployableMask2Former, letterbox, smallest_input_size

log = logging.getLogger(__name__)
console = Console()
# Largest disagreement accepted between the exported model and PyTorch on the check image:
# float outputs (probabilities and scores) by absolute difference; masks and classes by the share of
# elements that differ (a mask logit within float noise of 0 may flip a pixel).
PARITY_TOLERANCE = {"float": 1e-3, "discrete": 1e-3}
DEFAULT_FILE = {"onnx": "model.onnx", "aoti": "model.pt2"}


@dataclass
class ExportResult:
    path: Path
    format: str
    parity: dict[str, dict[str, Any]]  # per output: shape, kind, difference, tolerance
    report: Path


def load_network(spec: DictConfig, checkpoint: str) -> tuple[DictConfig, torch.nn.Module]:
    """The network of `checkpoint` ('best', 'latest' or a file) in eval mode on the CPU, and the spec with its architecture."""
    path = resolve_checkpoint(spec, checkpoint)
    content = read_checkpoint(path)
    spec = spec_for_checkpoint(spec, content)
    network = build_network(spec.model)
    prepare_for_checkpoint(network, content)
    load_weights(network, path)
    return spec, network.eval()


def deployable(spec: DictConfig, network: torch.nn.Module) -> DeployableMask2Former:
    """The exportable graph of a network for the spec's task (model.mode) and post-processing settings."""
    return DeployableMask2Former(
        network,
        spec.model.mode,
        list(spec.dataset.pixel_mean),
        list(spec.dataset.pixel_std),
        object_mask_threshold=spec.model.object_mask_threshold,
        overlap_threshold=spec.model.overlap_threshold,
        test_topk_per_image=spec.model.test_topk_per_image,
    ).eval()


def export_path(spec: DictConfig, fmt: str) -> Path:
    """export.onnx_file (with suffix .pt2 for aoti), else <export.results_dir or results_dir/export>/model.<onnx|pt2>."""
    if spec.export.onnx_file:
        path = Path(spec.export.onnx_file)
        return path.with_suffix(".pt2") if fmt == "aoti" else path
    return Path(spec.export.results_dir or Path(spec.results_dir) / "export") / DEFAULT_FILE[fmt]


def check_image(spec: DictConfig, box: Sequence[int]) -> tuple[torch.Tensor, str]:
    """The first validation image (dataset.val, else dataset.test.img_dir), resized as evaluation resizes it and
    letterboxed into box (H, W): (1, 3, H, W) float on the 0..255 scale, and its file name."""
    augmentation, cache = spec.dataset.augmentation, data_cache_dir(spec)
    if spec.dataset.val.img_dir or spec.dataset.val.root_dir:
        dataset: Any = build_split_dataset(spec, "val", build_label_map(spec), is_train=False)
    elif spec.dataset.test.img_dir:
        dataset = ImageFolderDataset(resolve_dir(spec.dataset.test.img_dir, cache), ResizeShortestEdge(augmentation.test_min_size, augmentation.test_max_size))
    else:
        raise UserError("dataset.val: export checks the exported model on a validation image; set dataset.val (or dataset.test.img_dir)")
    item = dataset[0]
    image, _ = letterbox(item["image"], box)
    return image[None].float(), item["file_name"]


def parity(reference: dict[str, torch.Tensor], candidate: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per output: its shape, kind (float or discrete), the largest difference and the tolerance it must meet."""
    report = {}
    for name, expected in reference.items():
        got = torch.as_tensor(np.asarray(candidate[name]))
        if tuple(got.shape) != tuple(expected.shape):
            raise UserError(f"export parity: output {name} has shape {tuple(got.shape)}, PyTorch gives {tuple(expected.shape)}")
        if expected.is_floating_point():
            kind, difference = "float", float((got.float() - expected.float()).abs().max()) if expected.numel() else 0.0
        else:
            kind, difference = "discrete", float((got.to(expected.dtype) != expected).float().mean()) if expected.numel() else 0.0
        report[name] = {"shape": list(expected.shape), "kind": kind, "difference": difference, "tolerance": PARITY_TOLERANCE[kind]}
    return report


def export_onnx(graph: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool, verbose: bool = False) -> None:
    """Write `graph` to `path` with torch.onnx's exporter: input `inputs`, the task's output names, every node standard."""
    import onnx

    with warnings.catch_warnings():  # the tracer flags every shape it freezes; the input size is fixed on purpose
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES[graph.task]), opset_version=opset,
            dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES[graph.task]}} if dynamic_batch else None,
            verbose=verbose,
        )
    nonstandard = sorted({f"{node.domain}::{node.op_type}" for node in onnx.load(str(path)).graph.node if node.domain not in ("", "ai.onnx")})
    if nonstandard:
        raise RuntimeError(f"{path}: the exported graph holds non-standard nodes {nonstandard}")


def run_onnx(path: Path) -> Callable[[torch.Tensor], dict[str, np.ndarray]]:
    session = onnx_session(path, ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda images: dict(zip(names, session.run(None, {INPUT_NAME: images.numpy()})))


def export_aoti(graph: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    """torch.export the graph and compile it with AOTInductor into a .pt2 package (CPU kernels, or CUDA ones for a GPU example)."""
    dynamic_shapes = {"inputs": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    # strict (TorchDynamo) tracing folds the level shapes that deformable attention reads back from a tensor
    started = time.monotonic()
    with torch.inference_mode():
        program = torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes, strict=True)
    # the compile takes minutes for a Swin backbone: say where the time goes
    log.info("torch.export: %.0f s; compiling with AOTInductor for %s", time.monotonic() - started, example.device.type)
    # the package carries what a reader needs to feed it (ONNX files carry it in their input shape and output names)
    metadata = {"mode": graph.task, "input_height": str(example.shape[-2]), "input_width": str(example.shape[-1]),
                "batch_size": "-1" if dynamic_batch else str(example.shape[0])}
    started = time.monotonic()
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs={"aot_inductor.metadata": metadata})
    log.info("AOTInductor compile: %.0f s", time.monotonic() - started)


def run_aoti(path: Path, task: str) -> Callable[[torch.Tensor], dict[str, np.ndarray]]:
    runner = torch._inductor.aoti_load_package(str(path))
    return lambda images: {name: out.numpy() for name, out in zip(OUTPUT_NAMES[task], runner(images))}


def run_export(spec: DictConfig, checkpoint: str | None = None, fmt: str | None = None, out: Path | None = None) -> ExportResult:
    """Export export.checkpoint (or `checkpoint`) in export.format (or `fmt`) to `out` (default `export_path`), then
    check it against PyTorch on a validation image; prints and writes the parity report.

    Raises UserError before any tracing for a size the network cannot take, and after it when the exported
    model disagrees with PyTorch beyond PARITY_TOLERANCE.
    """
    fmt = fmt or spec.export.format
    spec, network = load_network(spec, checkpoint or spec.export.checkpoint)
    box = (spec.export.input_height, spec.export.input_width)
    smallest = smallest_input_size(network, *box)
    if smallest is not None:
        raise UserError(
            f"export.input_height x export.input_width: {box[0]}x{box[1]} is too small for this network; the smallest that works is {smallest[0]}x{smallest[1]}"
        )
    graph = deployable(spec, network)
    image, file_name = check_image(spec, box)
    batch = spec.export.batch_size
    # a dynamic batch is traced with 2 images: a batch of 1 would be taken for a constant
    example = image.expand(batch if batch > 0 else 2, -1, -1, -1).contiguous()
    path = out or export_path(spec, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)

    console.print(f"exporting {spec.model.mode} Mask2Former ({box[0]}x{box[1]}, batch {'dynamic' if batch < 1 else batch}) to {path} ...", highlight=False)
    if fmt == "onnx":
        export_onnx(graph, example, path, spec.export.opset_version, batch < 1, spec.export.verbose)
        runner = run_onnx(path)
    else:  # a package always takes any batch (Inductor cannot lower this graph with a batch fixed at 1)
        export_aoti(graph, example if batch > 1 else torch.cat([example, example]), path, dynamic_batch=True)
        runner = run_aoti(path, spec.model.mode)
    with torch.inference_mode():
        expected = dict(zip(OUTPUT_NAMES[spec.model.mode], graph(example)))
    report = parity(expected, runner(example))

    table = Table(title=f"{fmt} vs PyTorch on {file_name}", header_style="bold")
    for column in ("output", "shape", "largest difference", "tolerance", "ok"):
        table.add_column(column, justify="left" if column in ("output", "shape") else "right")
    for name, row in report.items():
        ok = row["difference"] <= row["tolerance"]
        what = "abs" if row["kind"] == "float" else "share"
        table.add_row(name, "x".join(map(str, row["shape"])), f"{row['difference']:.2e} ({what})", f"{row['tolerance']:.0e}", "yes" if ok else "NO")
    console.print(table)
    result = ExportResult(path, fmt, report, path.with_name(path.name + ".parity.json"))
    content = {**asdict(result), "path": str(path), "report": str(result.report), "image": file_name, "mode": spec.model.mode,
               "input": [batch, 3, *box], "checkpoint": str(resolve_checkpoint(spec, checkpoint or spec.export.checkpoint))}
    content["passed"] = all(row["difference"] <= row["tolerance"] for row in report.values())
    result.report.write_text(json.dumps(content, indent=2))
    if not content["passed"]:
        worst = max(report, key=lambda n: report[n]["difference"] / report[n]["tolerance"])
        raise UserError(
            f"export parity: {path} differs from PyTorch on {worst} by {report[worst]['difference']:.2e} (tolerance {report[worst]['tolerance']:.0e}); "
            f"report in {result.report}"
        )
    console.print(f"wrote {path} (parity report {result.report})", highlight=False)
    return result
