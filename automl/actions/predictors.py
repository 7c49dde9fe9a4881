"""Deployed models behind one call, for evaluate and inference: RGB images in, the task's named outputs out.

One small predictor per format: an ONNX file (ONNX Runtime, CUDA provider when there is a GPU), an
AOTInductor package (.pt2) and a TensorRT engine. Each knows its input size (H, W), its batch size
(None: any) and its task (panoptic, instance or semantic), and returns the outputs of `model.export` as torch tensors.
`predict_dataset` runs one over a dataset and yields each image's prediction at its original size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from automl.host import usable_cores
from model.data import build_dataloader
from model.errors import UserError
from model.export import INPUT_NAME, OUTPUT_NAMES, letterbox, prediction_from_outputs

FORMATS = {".onnx": "onnx", ".pt2": "aoti", ".engine": "tensorrt", ".trt": "tensorrt", ".plan": "tensorrt"}
TENSORRT_INSTALL = "pip install tensorrt (NVIDIA's wheels need a CUDA GPU and driver)"


class Predictor(Protocol):
    task: str
    input_size: tuple[int, int]  # (H, W) the model takes
    batch_size: int | None  # None: any batch

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) float RGB on the 0..255 scale -> the outputs named in model.export.OUTPUT_NAMES[task]."""
        ...


def is_deployed(path: str | Path) -> bool:
    """Whether `path` names a deployed model (by suffix) rather than a PyTorch checkpoint."""
    return Path(str(path)).suffix.lower() in FORMATS


def task_of_outputs(names: Sequence[str], path: Path) -> str:
    for task, expected in OUTPUT_NAMES.items():
        if tuple(names) == expected:
            return task
    raise UserError(f"{path}: outputs {list(names)} are not those of a Mask2Former export ({', '.join(f'{m}: {list(n)}' for m, n in OUTPUT_NAMES.items())})")


def onnx_session(path: Path, providers: Sequence[str]) -> Any:
    """An ONNX Runtime session of `path` on the first available of `providers`, its CPU threads as
    many as the cores this process may run on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    return ort.InferenceSession(str(path), options, providers=[p for p in providers if p in ort.get_available_providers()])


class OnnxPredictor:
    """providers: ONNX Runtime's execution providers in order of preference (default: CUDA when there is a GPU, then CPU)."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None):
        wanted = providers or (["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else ["CPUExecutionProvider"])
        try:
            self.session = onnx_session(path, wanted)
        except Exception as err:  # onnxruntime raises its own types for unreadable or invalid files
            raise UserError(f"{path}: not a readable ONNX model ({err})") from None
        self.names = [o.name for o in self.session.get_outputs()]
        self.task = task_of_outputs(self.names, path)
        batch, _, height, width = self.session.get_inputs()[0].shape
        self.input_size = (int(height), int(width))
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else None

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {INPUT_NAME: images.cpu().numpy().astype(np.float32)})
        return {name: torch.from_numpy(value) for name, value in zip(self.names, outputs)}


class AotiPredictor:
    def __init__(self, path: Path):
        try:
            self.runner = torch._inductor.aoti_load_package(str(path))
        except Exception as err:  # a package compiled for another device or torch build fails here
            raise UserError(f"{path}: cannot load this AOTInductor package here ({type(err).__name__}: {str(err).splitlines()[0]})") from None
        metadata = self.runner.get_metadata()
        if "mode" not in metadata:
            raise UserError(f"{path}: not a Mask2Former package written by `automl export` (its metadata has no mode)")
        self.task = metadata["mode"]  # the package metadata's key, as `automl export` writes it
        self.input_size = (int(metadata["input_height"]), int(metadata["input_width"]))
        self.batch_size = int(metadata["batch_size"]) if int(metadata["batch_size"]) > 0 else None
        self.device = torch.device("cuda" if metadata.get("AOTI_DEVICE_KEY", "cpu").startswith("cuda") else "cpu")

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = self.runner(images.to(self.device, torch.float32))
        return dict(zip(OUTPUT_NAMES[self.task], outputs))


class TensorRTPredictor:
    """A TensorRT engine run with the TensorRT Python API on CUDA tensors (one execution context)."""

    def __init__(self, path: Path):
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"{path}: not a TensorRT engine this TensorRT {trt.__version__} can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.task = task_of_outputs(outputs, path)
        batch, _, height, width = self.engine.get_tensor_shape(INPUT_NAME)
        self.input_size = (height, width)
        # a dynamic engine takes batches up to its profile's maximum: run it at that size
        self.batch_size = batch if batch > 0 else int(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])
        self.dtypes = {n: torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype for n in outputs}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to("cuda", torch.float32).contiguous()
        self.context.set_input_shape(INPUT_NAME, tuple(images.shape))
        self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES[self.task]:
            outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outputs


def import_tensorrt() -> Any:
    """The tensorrt module, or a UserError naming the install when it is missing."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(f"TensorRT is not installed in this environment: {TENSORRT_INSTALL}") from None
    return tensorrt


def load_predictor(path: str | Path) -> Predictor:
    """The predictor of a deployed model file, by its suffix (see FORMATS)."""
    path = Path(str(path))
    if not path.is_file():
        raise UserError(f"{path}: deployed model not found")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown deployed model format; expected one of {sorted(FORMATS)}")
    return {"onnx": OnnxPredictor, "aoti": AotiPredictor, "tensorrt": TensorRTPredictor}[kind](path)


class Letterboxed(Dataset):
    """Items of a dataset (already resized as evaluation resizes) fitted into the predictor's input size (module `model.export.letterbox`)."""

    def __init__(self, dataset: Dataset, box: Sequence[int]):
        self.dataset, self.box = dataset, tuple(box)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        item["image"], item["size"] = letterbox(item["image"], self.box)
        # training targets are not needed: ground truth is read at the original size
        item["labels"], item["masks"] = item["labels"][:0], torch.zeros((0, *self.box), dtype=torch.bool)
        return item


def predict_dataset(
    predictor: Predictor, dataset: Dataset, batch_size: int, num_workers: int, is_thing: Sequence[bool]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(item fields, prediction) of every image in order: each image letterboxed into the predictor's input, run in
    batches (a fixed-batch model gets full batches, the last one padded with blank images), and its outputs brought
    back to the original size by `model.export.prediction_from_outputs`."""
    if predictor.batch_size is not None:
        batch_size = predictor.batch_size
    loader = build_dataloader(Letterboxed(dataset, predictor.input_size), batch_size, num_workers, shuffle=False)
    for batch in loader:
        images = batch["images"].float()
        count = len(images)
        if predictor.batch_size is not None and count < predictor.batch_size:
            images = torch.cat([images, images.new_zeros(predictor.batch_size - count, *images.shape[1:])])
        outputs = {name: value.cpu() for name, value in predictor(images).items()}
        for i in range(count):
            prediction = prediction_from_outputs(
                {name: value[i] for name, value in outputs.items()}, predictor.task, batch["image_sizes"][i], batch["orig_sizes"][i], is_thing
            )
            yield {key: batch[key][i] for key in ("image_ids", "file_names", "indices")}, prediction


def check_task(predictor: Predictor, spec_task: str, path: str | Path) -> None:
    """The spec's model.mode must be the task the deployed model was exported for."""
    if predictor.task != spec_task:
        raise UserError(f"model.mode: '{spec_task}', but {path} is a {predictor.task} model; set model.mode={predictor.task}")

