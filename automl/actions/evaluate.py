"""`automl evaluate`: score a checkpoint or a deployed model on the validation split, or score prediction files of any system.

A deployed model (an ONNX file, an AOTInductor .pt2 package or a TensorRT engine, see
`automl.actions.predictors`) is scored on the same images and by the same evaluator as a checkpoint.

Writes `<results_dir>/evaluate/metrics.json` (every score, per class too) and prints the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from automl.actions.predictors import Predictor, check_task, is_deployed, load_predictor, predict_dataset
from automl.actions.quantize import prepare_for_checkpoint
from automl.spec.model_args import spec_keys_in_errors
from automl.tracking import headline, per_class_rows
from automl.training import BEST_NAME, LATEST_NAME, build_datamodule, build_label_map, build_module, seed_everything, train_dir
from model.checkpoint import load_weights, read_checkpoint
from model.data import LabelMap
from model.data.files import read_json, read_label_png
from model.errors import UserError
from model.evaluator import SegmentationEvaluator
from model.metrics import SemanticMetrics, ap_from_coco_files, pq_from_coco_files

console = Console()
# Parts of the model section that fix the network's shape (taken from the checkpoint).
ARCHITECTURE_KEYS = ("backbone", "sem_seg_head", "mask_former")


def resolve_checkpoint(spec: DictConfig, value: str) -> Path:
    """'best' (the sweep's winner, else the plain training run's best), 'latest' (of the plain run) or a path."""
    if value == "best":
        winner = Path(spec.results_dir) / "best" / f"{BEST_NAME}.pth"
        path = winner if winner.is_file() else train_dir(spec) / f"{BEST_NAME}.pth"
    elif value == "latest":
        path = train_dir(spec) / f"{LATEST_NAME}.pth"
    else:
        path = Path(value)
    if not path.is_file():
        raise UserError(f"checkpoint '{value}': {path} does not exist")
    return path


def spec_for_checkpoint(spec: DictConfig, checkpoint: dict[str, Any]) -> DictConfig:
    """The user's spec with the network shape the checkpoint was trained with."""
    trained = checkpoint.get("spec", {}).get("model", {})
    spec = spec.copy()
    for key in ARCHITECTURE_KEYS:
        if key in trained:
            spec.model[key] = OmegaConf.merge(spec.model[key], trained[key])
    return spec


def evaluate_checkpoint(spec: DictConfig, checkpoint: str | None, batch_size: int | None = None) -> dict[str, float]:
    """Validation metrics of `checkpoint`: 'best', 'latest', a checkpoint file or a deployed model file (None: the
    untrained model, a sweep's baseline)."""
    if checkpoint is not None and is_deployed(checkpoint):
        return evaluate_deployed(spec, checkpoint, batch_size)
    seed_everything(spec)  # an untrained model's weights come from the seed
    if checkpoint is not None:
        path = resolve_checkpoint(spec, checkpoint)
        content = read_checkpoint(path)
        spec = spec_for_checkpoint(spec, content)
    label_map = build_label_map(spec)
    module = build_module(spec, label_map)
    if checkpoint is not None:
        prepare_for_checkpoint(module.model, content)
        with spec_keys_in_errors():  # a class head of another size is an error here, not a random classifier
            load_weights(module.model, path)
    datamodule = build_datamodule(spec, label_map, with_train=False)
    if batch_size:
        datamodule.val_batch_size = batch_size
    on_gpu = torch.cuda.is_available()
    trainer = pl.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return module.validation_metrics


def evaluate_deployed(spec: DictConfig, path: str, batch_size: int | None = None) -> dict[str, float]:
    """Validation metrics of a deployed model file; the spec's model.mode and num_classes must be the model's."""
    predictor = load_predictor(path)
    check_task(predictor, spec.model.mode, path)
    return evaluate_predictor(spec, predictor, batch_size)


def evaluate_predictor(spec: DictConfig, predictor: Predictor, batch_size: int | None = None) -> dict[str, float]:
    """Validation metrics of any predictor (see automl.actions.predictors): each image letterboxed into its input size."""
    label_map = build_label_map(spec)
    dataset = build_datamodule(spec, label_map, with_train=False).val_set
    is_thing = label_map.is_thing_per_class(spec.model.sem_seg_head.num_classes)
    evaluator = SegmentationEvaluator(spec.model.mode, is_thing)
    batch_size = batch_size or spec.dataset.val.batch_size
    for item, prediction in predict_dataset(predictor, dataset, batch_size, spec.dataset.val.num_workers, is_thing):
        evaluator.update(prediction, dataset.ground_truth(item["indices"]))
    return evaluator.compute()


def evaluate_predictions(spec: DictConfig, predictions: str | Path) -> dict[str, float]:
    """Score files made by any system against dataset.val, with no model.

    predictions: a COCO panoptic JSON (its PNGs in the folder of the same stem beside it), a COCO
    results JSON with RLE masks, or a folder of semantic PNGs named like the images.
    """
    path, val = Path(predictions), spec.dataset.val
    if not path.exists():
        raise UserError(f"--predictions: {path} does not exist")
    if path.is_dir():
        return _semantic_from_pngs(spec, path)
    content = read_json(path)
    if isinstance(content, dict) and "annotations" in content:
        if val.type != "coco_panoptic":
            raise UserError(f"--predictions: {path} is a panoptic prediction, but dataset.val.type is '{val.type}'")
        png_dir = path.with_suffix("")
        if not png_dir.is_dir():
            raise UserError(f"--predictions: the PNG folder {png_dir} of {path} does not exist")
        return pq_from_coco_files(val.panoptic_json, val.panoptic_dir, path, png_dir)
    if isinstance(content, list):
        gt_json = val.instance_json
        if not gt_json:
            raise UserError("--predictions: scoring COCO results needs dataset.val.instance_json")
        return ap_from_coco_files(gt_json, path)
    raise UserError(f"--predictions: {path} is neither COCO panoptic predictions nor a COCO results list")


def _semantic_from_pngs(spec: DictConfig, folder: Path) -> dict[str, float]:
    label_map = build_label_map(spec)
    dataset = build_datamodule(spec, label_map, with_train=False).val_set
    metrics = SemanticMetrics(spec.model.sem_seg_head.num_classes)
    for index in range(len(dataset)):
        stem = Path(dataset.reader.images[index].file_name).stem
        png = folder / f"{stem}.png"
        if not png.exists():
            raise UserError(f"--predictions: {png} is missing (one PNG of category ids per validation image)")
        # Every pixel must carry a category id of the label map (unknown ids are a UserError).
        predicted = label_map.train_ids(read_label_png(png, expect_rgb=False), str(png))
        metrics.update(predicted, dataset.ground_truth(index)["semantic"])
    return metrics.compute()


def write_metrics(metrics: dict[str, float], out_dir: str | Path, label_map: LabelMap | None = None) -> Path:
    """metrics.json: headline scores and a per-class table (NaN written as null)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in headline(metrics).items()}
    rows = per_class_rows(metrics, label_map.names if label_map is not None else None)
    path = out / "metrics.json"
    path.write_text(json.dumps({"metrics": scores, "per_class": rows}, indent=2))
    return path


def print_metrics(metrics: dict[str, float], title: str = "Evaluation") -> None:
    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if "/" not in key:
            table.add_row(key, "-" if value != value else f"{value:.2f}")
    console.print(table)
