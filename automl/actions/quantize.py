"""`automl quantize`: post-training quantisation, with what it costs and gains measured against the float model.

Backends (quantize.backend):
    torchao          int8 weights (mode weight_only_ptq) or int8 weights and dynamically quantised int8
                     activations (dynamic_ptq) on the network's linear layers; writes a checkpoint that records
                     the quantisation, so evaluate, inference and export rebuild it.
    onnx             ONNX Runtime static QDQ quantisation (static_ptq) of an ONNX file of `automl export`,
                     calibrated on dataset.quant_calibration_dataset.images_dir (folder or archive).
    modelopt.*       NVIDIA ModelOpt, when the nvidia-modelopt package imports.
quantize.layers / quantize.skip_names are fnmatch patterns over module names (torchao) or node names (onnx).
Every run prints and writes `<results_dir>/quantize/report.json`: file size, latency on this machine (median
of LATENCY_RUNS on one validation image) and the validation metrics of both models, with their deltas.
"""

from __future__ import annotations

import fnmatch
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from model.errors import UserError

console = Console()
LATENCY_RUNS = 10
HEADLINE = {"panoptic": ("PQ", "SQ", "RQ", "mIoU", "AP"), "instance": ("AP", "mIoU"), "semantic": ("mIoU", "pACC")}
TORCHAO_MODES = ("weight_only_ptq", "dynamic_ptq")
ONNX_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the layers static ONNX quantisation makes int8
CALIBRATION_IMAGES = 64  # at most this many images calibrate the ONNX activations
QUANTIZATION_KEY = "quantization"  # the checkpoint's record of how its weights were quantised


def quantize_dir(spec: DictConfig) -> Path:
    return Path(spec.quantize.results_dir or Path(spec.results_dir) / "quantize")


def selected(name: str, layers: Sequence[str], skip_names: Sequence[str]) -> bool:
    """Whether a module/node name is quantised: it matches a `layers` pattern (any, when none is given) and no `skip_names` one."""
    return (not layers or any(fnmatch.fnmatchcase(name, p) for p in layers)) and not any(fnmatch.fnmatchcase(name, p) for p in skip_names)


def torchao_quantize(network: torch.nn.Module, mode: str, layers: Sequence[str] = (), skip_names: Sequence[str] = ()) -> list[str]:
    """Quantise the network's linear layers in place with torchao; returns the names of the quantised layers."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    config = {"weight_only_ptq": Int8WeightOnlyConfig, "dynamic_ptq": Int8DynamicActivationInt8WeightConfig}[mode]()
    chosen = [name for name, module in network.named_modules() if isinstance(module, torch.nn.Linear) and selected(name, layers, skip_names)]
    if not chosen:
        raise UserError(f"quantize.layers / quantize.skip_names: no linear layer is left to quantise (layers {list(layers)}, skip_names {list(skip_names)})")
    names = set(chosen)
    quantize_(network, config, filter_fn=lambda module, name: name in names)
    return chosen


def prepare_for_checkpoint(network: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Quantise a freshly built network as the checkpoint's weights were, so that they load into it (no-op for a float checkpoint)."""
    record = checkpoint.get(QUANTIZATION_KEY)
    if record:
        names = set(record["layers"])
        torchao_quantize(network, record["mode"], layers=sorted(names))


def run_quantize(spec: DictConfig) -> Path:
    """Quantise quantize.model_path with quantize.backend / quantize.mode; returns the report's path."""
    q = spec.quantize
    if q.backend.startswith("modelopt"):
        _import_modelopt(q.backend)
    if q.backend == "torchao" and q.mode not in TORCHAO_MODES:
        raise UserError(f"quantize.mode: '{q.mode}' is not a torchao mode; expected one of {list(TORCHAO_MODES)} (static_ptq: backend onnx)")
    if q.backend == "onnx" and q.mode != "static_ptq":
        raise UserError(f"quantize.mode: backend onnx quantises weights and calibrated activations; set quantize.mode=static_ptq (got '{q.mode}')")
    out = quantize_dir(spec)
    out.mkdir(parents=True, exist_ok=True)
    if q.backend in ("torchao", "modelopt.pytorch"):
        original, quantized = _quantize_checkpoint(spec, out)
    else:
        original, quantized = quantize_onnx(spec, out)
    return write_report(spec, original, quantized, out)


def _quantize_checkpoint(spec: DictConfig, out: Path) -> tuple[Path, Path]:
    from automl.actions.evaluate import resolve_checkpoint
    from automl.actions.export import load_network
    from model.checkpoint import read_checkpoint

    q = spec.quantize
    source = resolve_checkpoint(spec, q.model_path)
    checkpoint = read_checkpoint(source)
    if checkpoint.get(QUANTIZATION_KEY):
        raise UserError(f"quantize.model_path: {source} is already quantised; give its float checkpoint")
    spec, network = load_network(spec, str(source))
    if q.backend == "torchao":
        layers = torchao_quantize(network, q.mode, list(q.layers), list(q.skip_names))
        record = {"backend": "torchao", "mode": q.mode, "layers": layers}
    else:
        layers, record = _modelopt_pytorch(spec, network), None
    path = out / f"{source.stem}_{q.mode}.pth"
    content = {"state_dict": {f"model.{k}": v for k, v in network.state_dict().items()}, "spec": checkpoint.get("spec", OmegaConf.to_container(spec, resolve=True))}
    if record:
        content[QUANTIZATION_KEY] = record
    torch.save(content, path)
    console.print(f"quantised {len(layers)} linear layers ({q.backend}, {q.mode}) -> {path}", highlight=False)
    return source, path


def quantize_onnx(spec: DictConfig, out: Path) -> tuple[Path, Path]:
    """Static QDQ quantisation of the ONNX file quantize.model_path into `out`; returns (source, quantised file)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    q = spec.quantize
    source = Path(q.model_path)
    if source.suffix.lower() != ".onnx" or not source.is_file():
        raise UserError(f"quantize.model_path: backend {q.backend} quantises an ONNX file of `automl export`; {source} is not one")
    images_dir = spec.dataset.quant_calibration_dataset.images_dir
    if not images_dir:
        raise UserError("dataset.quant_calibration_dataset.images_dir: required by static quantisation (a folder or archive of images)")
    methods = {"minmax": CalibrationMethod.MinMax, "max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    if q.algorithm not in methods:
        raise UserError(f"quantize.algorithm: '{q.algorithm}' is not an ONNX Runtime calibration; expected one of {sorted(methods)}")
    if q.backend == "modelopt.onnx":
        return source, _modelopt_onnx(spec, source, out)

    inputs = _calibration_batches(spec, source)

    class Reader(CalibrationDataReader):
        """The calibration batches; ONNX Runtime reads them one range at a time (CalibStridedMinMax below)."""

        def __init__(self) -> None:
            self.set_range(0, len(inputs))

        def __len__(self) -> int:
            return len(inputs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(inputs[start_index:end_index])

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"inputs": batch.numpy()}

    prepared = out / f"{source.stem}_prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    nodes = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in ONNX_QUANTIZED_OPS]
    chosen = [n for n in nodes if selected(n, list(q.layers), list(q.skip_names))]
    if not chosen:
        raise UserError(f"quantize.layers / quantize.skip_names: no Conv, MatMul or Gemm node is left to quantise (layers {list(q.layers)}, skip_names {list(q.skip_names)})")
    path = out / f"{source.stem}_{q.mode}.onnx"
    quantize_static(
        str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        per_channel=True, calibrate_method=methods[q.algorithm], nodes_to_quantize=chosen,
        # Only these ops' tensors are calibrated; by default ONNX Runtime calibrates every tensor (12 GiB per image for Swin-T at 544x960).
        op_types_to_quantize=list(ONNX_QUANTIZED_OPS),
        # Ranges merged after every batch: at once, ONNX Runtime keeps the calibrated tensors of every
        # image (memory grows with the calibration set instead of staying at one batch's).
        extra_options={"ActivationSymmetric": True, "CalibStridedMinMax": 1, **dict(q.backend_kwargs)},
    )
    prepared.unlink()
    console.print(f"quantised {len(chosen)} of {len(nodes)} Conv/MatMul/Gemm nodes (static QDQ, {q.algorithm}) -> {path}", highlight=False)
    return source, path


def _calibration_batches(spec: DictConfig, onnx_file: Path) -> list[torch.Tensor]:
    """Up to CALIBRATION_IMAGES calibration images, resized as evaluation resizes and letterboxed into the model's input."""
    from automl.actions.predictors import load_predictor
    from model.data import resolve_dir
    from model.data.image_folder import ImageFolderDataset
    from model.data.transforms import ResizeShortestEdge
    from model.export import letterbox

    predictor = load_predictor(onnx_file)
    augmentation = spec.dataset.augmentation
    folder = resolve_dir(spec.dataset.quant_calibration_dataset.images_dir, Path(spec.results_dir) / "cache")
    images = ImageFolderDataset(folder, ResizeShortestEdge(augmentation.test_min_size, augmentation.test_max_size))
    batch = predictor.batch_size or 1
    count = min(len(images), CALIBRATION_IMAGES) // batch * batch
    if count == 0:
        raise UserError(f"dataset.quant_calibration_dataset.images_dir: {folder} holds fewer images than one batch ({batch})")
    letterboxed = [letterbox(images[i]["image"], predictor.input_size)[0].float() for i in range(count)]
    return [torch.stack(letterboxed[i : i + batch]) for i in range(0, count, batch)]


def _import_modelopt(backend: str) -> Any:
    try:
        import modelopt
    except ImportError:
        raise UserError(f"quantize.backend: '{backend}' needs NVIDIA's ModelOpt: pip install nvidia-modelopt (or use backend torchao or onnx)") from None
    return modelopt


def _modelopt_pytorch(spec: DictConfig, network: torch.nn.Module) -> list[str]:
    """ModelOpt INT8 fake-quantisation of the network, calibrated on the calibration images (needs nvidia-modelopt)."""
    import modelopt.torch.quantization as mtq

    images = _calibration_images_for(spec, network)
    config = {"weight_only_ptq": mtq.INT8_WEIGHT_ONLY_CFG, "static_ptq": mtq.INT8_DEFAULT_CFG}.get(spec.quantize.mode)
    if config is None:
        raise UserError(f"quantize.mode: '{spec.quantize.mode}' is not a modelopt.pytorch mode; expected static_ptq or weight_only_ptq")
    mtq.quantize(network, config, forward_loop=lambda model: [model(image[None]) for image in images])
    return [name for name, _ in network.named_modules() if "quantizer" in name]


def _calibration_images_for(spec: DictConfig, network: torch.nn.Module) -> list[torch.Tensor]:
    from model.data import resolve_dir
    from model.data.image_folder import ImageFolderDataset
    from model.data.transforms import ResizeShortestEdge

    augmentation = spec.dataset.augmentation
    folder = resolve_dir(spec.dataset.quant_calibration_dataset.images_dir, Path(spec.results_dir) / "cache")
    dataset = ImageFolderDataset(folder, ResizeShortestEdge(augmentation.test_min_size, augmentation.test_max_size))
    mean = torch.tensor(list(spec.dataset.pixel_mean)).view(3, 1, 1) * 255
    std = torch.tensor(list(spec.dataset.pixel_std)).view(3, 1, 1) * 255
    return [(dataset[i]["image"].float() - mean) / std for i in range(min(len(dataset), CALIBRATION_IMAGES))]


def _modelopt_onnx(spec: DictConfig, source: Path, out: Path) -> Path:
    """ModelOpt's INT8 ONNX PTQ (needs nvidia-modelopt)."""
    import numpy as np
    from modelopt.onnx.quantization import quantize

    path = out / f"{source.stem}_{spec.quantize.mode}.onnx"
    calibration = np.concatenate([b.numpy() for b in _calibration_batches(spec, source)])
    quantize(onnx_path=str(source), quantize_mode="int8", calibration_data=calibration, calibration_method=spec.quantize.algorithm,
             output_path=str(path), **dict(spec.quantize.backend_kwargs))
    return path


def measure(spec: DictConfig, model: Path) -> dict[str, Any]:
    """File size, latency on this machine and validation metrics of a checkpoint or an ONNX file."""
    from automl.actions.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(spec, str(model))
    headline = {k: metrics[k] for k in HEADLINE[spec.model.mode] if k in metrics}
    return {"path": str(model), "size_mb": _size(model) / 2**20, "latency_ms": _latency(spec, model), "metrics": headline}


def _size(model: Path) -> int:
    """Bytes of the model: the file of a deployed model; the network's weights alone of a checkpoint (a training
    checkpoint also holds the optimiser state, which no deployment carries)."""
    from automl.actions.predictors import is_deployed
    from model.checkpoint import network_state_dict, read_checkpoint

    if is_deployed(model):
        return model.stat().st_size
    buffer = io.BytesIO()
    torch.save(network_state_dict(read_checkpoint(model)), buffer)
    return buffer.tell()


def _latency(spec: DictConfig, model: Path) -> float:
    """Median milliseconds of one forward pass on one validation image (after two warm-up runs)."""
    from automl.actions.export import check_image, deployable, load_network
    from automl.actions.predictors import is_deployed, load_predictor

    if is_deployed(model):
        predictor = load_predictor(model)
        image, _ = check_image(spec, predictor.input_size)
        run: Callable[[], Any] = lambda: predictor(image.expand(predictor.batch_size or 1, -1, -1, -1))
    else:
        spec, network = load_network(spec, str(model))
        graph = deployable(spec, network)
        image, _ = check_image(spec, (spec.dataset.augmentation.test_min_size,) * 2)
        run = lambda: graph(image)  # noqa: E731
    times = []
    with torch.inference_mode():
        for i in range(LATENCY_RUNS + 2):
            start = time.perf_counter()
            run()
            if i >= 2:
                times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def write_report(spec: DictConfig, original: Path, quantized: Path, out: Path) -> Path:
    """Measure both models, print the comparison and write report.json; returns its path."""
    before, after = measure(spec, original), measure(spec, quantized)
    deltas = {k: after["metrics"][k] - v for k, v in before["metrics"].items() if k in after["metrics"]}
    report = {"backend": spec.quantize.backend, "mode": spec.quantize.mode, "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
              "float": before, "quantized": after, "metric_deltas": deltas}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2))
    table = Table(title=f"quantize ({spec.quantize.backend}, {spec.quantize.mode}) on {report['device']}", header_style="bold")
    for column in ("model", "size MiB", "latency ms", *before["metrics"]):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, row in (("float", before), ("quantized", after)):
        table.add_row(name, f"{row['size_mb']:.2f}", f"{row['latency_ms']:.1f}", *(f"{v:.2f}" for v in row["metrics"].values()))
    table.add_row("delta", f"{after['size_mb'] - before['size_mb']:+.2f}", f"{after['latency_ms'] - before['latency_ms']:+.1f}", *(f"{v:+.2f}" for v in deltas.values()))
    console.print(table)
    console.print(f"wrote {quantized} and {path}", highlight=False)
    return path
