"""`automl gen_trt_engine`: an ONNX file of `automl export` -> a TensorRT engine, with the TensorRT Python API.

FP32, FP16 or INT8 (calibrated on dataset.quant_calibration_dataset.images_dir, the cache kept for the next
build), one optimisation profile over the batch from gen_trt_engine.tensorrt.{min,opt,max}_batch_size, the
workspace limit, and a timing cache that is read, updated and written back. The graph is plugin-free, so
any TensorRT >= 8.6 parses it. Written to the TensorRT 10 API; not run on the machines this was built on
(no TensorRT there): without the package the command stops with the install to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from automl.actions.predictors import import_tensorrt
from model.data import resolve_dir
from model.data.image_folder import ImageFolderDataset
from model.errors import UserError
from model.export import INPUT_NAME, letterbox

console = Console()


def engine_path(spec: DictConfig) -> Path:
    """gen_trt_engine.trt_engine, else <gen_trt_engine.results_dir or results_dir/gen_trt_engine>/model.engine."""
    cfg = spec.gen_trt_engine
    return Path(cfg.trt_engine or Path(cfg.results_dir or Path(spec.results_dir) / "gen_trt_engine") / "model.engine")


def run_gen_trt_engine(spec: DictConfig) -> Path:
    """Build and write the engine of gen_trt_engine.onnx_file; returns its path."""
    trt = import_tensorrt()
    cfg, settings = spec.gen_trt_engine, spec.gen_trt_engine.tensorrt
    data_type = settings.data_type.upper()
    if not Path(cfg.onnx_file).is_file():
        raise UserError(f"gen_trt_engine.onnx_file: {cfg.onnx_file} does not exist")
    if data_type == "INT8" and not spec.dataset.quant_calibration_dataset.images_dir:
        raise UserError("dataset.quant_calibration_dataset.images_dir: required to calibrate an INT8 engine")
    logger = trt.Logger(trt.Logger.VERBOSE if cfg.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(cfg.onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"gen_trt_engine.onnx_file: TensorRT cannot parse {cfg.onnx_file}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_size << 20)
    if data_type in ("FP16", "INT8"):
        config.set_flag(trt.BuilderFlag.FP16)
    shape = tuple(network.get_input(0).shape)  # (B, 3, H, W), B = -1 when the file's batch is dynamic
    batches = (settings.min_batch_size, settings.opt_batch_size, settings.max_batch_size)
    if cfg.batch_size > 0 or shape[0] > 0:
        batches = (cfg.batch_size if cfg.batch_size > 0 else shape[0],) * 3
    if not batches[0] <= batches[1] <= batches[2]:
        raise UserError(f"gen_trt_engine.tensorrt: expected min_batch_size <= opt_batch_size <= max_batch_size, got {batches}")
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *[(b, *shape[1:]) for b in batches])
    config.add_optimization_profile(profile)
    if data_type == "INT8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = calibrator(trt, spec, shape[-2:], engine_path(spec))

    timing_cache = Path(cfg.timing_cache) if cfg.timing_cache else None
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    console.print(f"building a {data_type} TensorRT {trt.__version__} engine of {cfg.onnx_file} (batch {batches[0]}..{batches[2]}) ...", highlight=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    path = engine_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(serialized))
    if timing_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    console.print(f"wrote {path}", highlight=False)
    return path


def calibrator(trt: Any, spec: DictConfig, size: tuple[int, int], engine: Path) -> Any:
    """An entropy calibrator over the calibration images, letterboxed into the input size as evaluation feeds them."""
    settings = spec.gen_trt_engine.tensorrt.calibration
    images = ImageFolderDataset(resolve_dir(spec.dataset.quant_calibration_dataset.images_dir, Path(spec.results_dir) / "cache"), transform=_as_is)
    cache_file = Path(settings.cal_cache_file or engine.with_suffix(".cal"))

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.next = 0
            self.batch: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return settings.cal_batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            stop = min(len(images) // settings.cal_batch_size, settings.cal_batches) * settings.cal_batch_size  # full batches only
            if self.next >= stop:
                return None
            chosen = range(self.next, min(self.next + settings.cal_batch_size, stop))
            self.next = chosen.stop
            self.batch = torch.stack([letterbox(images[i]["image"], size)[0] for i in chosen]).float().cuda()
            return [self.batch.data_ptr()]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return Calibrator()


def _as_is(image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The identity transform: letterbox does the resizing."""
    return image, masks, (image.shape[-2], image.shape[-1])
