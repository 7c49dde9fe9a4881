"""One training run from a spec: data, model, Lightning Trainer, checkpoints; the path every trial reuses.

`automl launch --policy off` calls `run_training` with an MLflow callback; a sweep trial calls
it with a Tune-report callback. Nothing here knows about Ray or MLflow.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from automl.files import atomic_write, replace_symlink
from automl.spec.model_args import build_network, build_split_dataset, data_cache_dir
from model.checkpoint import load_weights, read_checkpoint
from model.criterion import SetCriterion
from model.data import LabelMap, collate, resolve_file
from model.data.dataset import AnnotationReader
from model.datamodule import SegmentationDataModule
from model.errors import UserError
from model.evaluator import SegmentationEvaluator
from model.lit import Mask2FormerModule
from model.matcher import HungarianMatcher
from model.postprocess import Postprocessor

if TYPE_CHECKING:
    from automl.shared_data import SharedData

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model_epoch_{epoch:03d}_step_{step:05d}"
LATEST_NAME = "mask2former_model_latest"
BEST_NAME = "mask2former_model_best"
PRECISION = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}
DEFAULT_METRIC = {"panoptic": "PQ", "instance": "AP", "semantic": "mIoU"}


def target_metric(spec: DictConfig) -> str:
    """The metric that ranks runs: automl.metric, else PQ / AP / mIoU by model.mode."""
    return (spec.automl.metric or DEFAULT_METRIC[spec.model.mode]).removeprefix("val/")


def train_dir(spec: DictConfig) -> Path:
    return Path(spec.train.results_dir or Path(spec.results_dir) / "train")


@dataclass
class TrainResult:
    """What a finished run leaves: its metrics and checkpoints."""

    metrics: dict[str, float]  # of the last validation
    best_metrics: dict[str, float]  # of the validation with the best target metric
    best_checkpoint: Path | None
    latest_checkpoint: Path | None


class SpecCheckpoint(ModelCheckpoint):
    """Checkpoints named as the reference names them (`.pth`, and the latest link).

    A name is always reused, never versioned (`latest-v1`): a rerun replaces the latest link
    and the best file, so `checkpoint=latest` and the next resume find the newest.
    """

    FILE_EXTENSION = ".pth"
    CHECKPOINT_NAME_LAST = LATEST_NAME

    def __init__(self, **kwargs: Any):
        super().__init__(auto_insert_metric_name=False, enable_version_counter=False, **kwargs)

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        # Lightning removes the old link before making the new one: a kill in between leaves none.
        if trainer.is_global_zero and Path(filepath).absolute() != Path(linkpath).absolute():
            replace_symlink(filepath, linkpath)
        trainer.strategy.barrier()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written through a temporary file beside them (a kill or full disk leaves the old one)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_write(path) as f:
            torch.save(checkpoint, f)


class RngState(Callback):
    """Saves the random generators (Python, NumPy, torch CPU and CUDA) with every checkpoint and
    restores them on resume, so a resumed run draws what an uninterrupted one would have drawn
    (augmentations, point sampling, drop path). Stored as tensors and plain values, so the
    checkpoint still loads with `weights_only=True`."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class ValidateLastEpoch(Callback):
    """Validates after the last epoch even when num_epochs is not a multiple of validation_interval."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch + 1 == trainer.max_epochs:
            trainer.check_val_every_n_epoch = 1


class AttachSpec(Callback):
    """Puts the resolved spec into every checkpoint, so evaluate/export rebuild the same network."""

    def __init__(self, spec: DictConfig):
        self.spec_dict = OmegaConf.to_container(spec, resolve=True)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["spec"] = self.spec_dict


class BestMetrics(Callback):
    """Remembers the metrics of the last and of the best validation (by the target metric).

    Callbacks read the module's metrics in `on_validation_end`: their `on_validation_epoch_end`
    runs before the module's, which computes them.
    """

    def __init__(self, metric: str, direction: str = "max"):
        self.metric, self.sign = metric, 1.0 if direction == "max" else -1.0
        self.last: dict[str, float] = {}
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last = dict(getattr(pl_module, "validation_metrics", {}))
        value = self.last.get(self.metric, float("nan"))
        best = self.best.get(self.metric, float("nan"))
        if value == value and (best != best or self.sign * value > self.sign * best):
            self.best = dict(self.last)


def build_label_map(spec: DictConfig) -> LabelMap:
    label_map = LabelMap.from_file(resolve_file(spec.dataset.label_map, data_cache_dir(spec)), contiguous_id=spec.dataset.contiguous_id)
    label_map.check_num_classes(spec.model.sem_seg_head.num_classes)
    return label_map


def build_module(spec: DictConfig, label_map: LabelMap) -> Mask2FormerModule:
    """Network, matcher, losses, post-processing and metrics as the spec's model section says."""
    mf = spec.model.mask_former
    network = build_network(spec.model)
    matcher = HungarianMatcher(cost_class=mf.class_weight, cost_mask=mf.mask_weight, cost_dice=mf.dice_weight, num_points=mf.train_num_points)
    criterion = SetCriterion(
        spec.model.sem_seg_head.num_classes,
        matcher,
        class_weight=mf.class_weight,
        mask_weight=mf.mask_weight,
        dice_weight=mf.dice_weight,
        no_object_weight=mf.no_object_weight,
        num_points=mf.train_num_points,
        oversample_ratio=mf.oversample_ratio,
        importance_sample_ratio=mf.importance_sample_ratio,
        deep_supervision=mf.deep_supervision,
    )
    is_thing = label_map.is_thing_per_class(spec.model.sem_seg_head.num_classes)
    postprocess = Postprocessor(
        task=spec.model.mode,
        num_classes=spec.model.sem_seg_head.num_classes,
        is_thing=is_thing,
        object_mask_threshold=spec.model.object_mask_threshold,
        overlap_threshold=spec.model.overlap_threshold,
        test_topk_per_image=spec.model.test_topk_per_image,
    )
    optim = spec.train.optim
    return Mask2FormerModule(
        network,
        criterion,
        SegmentationEvaluator(spec.model.mode, is_thing),
        postprocess,
        pixel_mean=list(spec.dataset.pixel_mean),
        pixel_std=list(spec.dataset.pixel_std),
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        backbone_multiplier=optim.backbone_multiplier,
        lr_scheduler=optim.lr_scheduler,
        milestones=list(optim.milestones),
        gamma=optim.gamma,
        warmup_steps=optim.warmup_iters,
        poly_power=optim.poly_power,
        num_epochs=spec.train.num_epochs,
        freeze=list(spec.train.freeze),
        cuda_graph=spec.train.cuda_graph,
    )


def build_datamodule(spec: DictConfig, label_map: LabelMap, *, with_train: bool = True, readers: Mapping[str, AnnotationReader] | None = None) -> SegmentationDataModule:
    """Training and validation data; `readers` are splits already decoded (a sweep's shared data)."""
    readers = readers or {}
    train_set = build_split_dataset(spec, "train", label_map, is_train=True, reader=readers.get("train")) if with_train else None
    val_set = build_split_dataset(spec, "val", label_map, is_train=False, reader=readers.get("val"))
    return SegmentationDataModule(
        train_set,
        val_set,
        collate,
        train_batch_size=spec.dataset.train.batch_size,
        val_batch_size=spec.dataset.val.batch_size,
        num_workers=spec.dataset.train.num_workers,
        pin_memory=spec.dataset.pin_memory,
        seed=max(spec.train.seed, 0),
        full_train_batches=spec.train.cuda_graph,
    )


def trainer_settings(spec: DictConfig) -> dict[str, Any]:
    """Trainer arguments for the spec's devices, precision, strategy, schedule and clipping."""
    train = spec.train
    on_gpu = torch.cuda.is_available()
    devices: Any = list(train.gpu_ids)[: train.num_gpus] if on_gpu and len(train.gpu_ids) >= train.num_gpus else train.num_gpus
    processes = (len(devices) if isinstance(devices, list) else devices) * train.num_nodes
    strategy = ("fsdp" if train.distributed_strategy == "fsdp" else "ddp") if processes > 1 else "auto"
    if strategy == "fsdp" and not on_gpu:
        raise UserError("train.distributed_strategy: fsdp needs GPUs (Lightning runs FSDP on CUDA only); use ddp on a machine without GPUs")
    settings = dict(
        accelerator="gpu" if on_gpu else "cpu",
        devices=devices,
        num_nodes=train.num_nodes,
        strategy=strategy,
        precision=PRECISION[train.precision] if on_gpu or train.precision == "bf16" else "32-true",
        max_epochs=train.num_epochs,
        check_val_every_n_epoch=train.validation_interval,
        num_sanity_val_steps=0,
        gradient_clip_val=train.clip_grad_norm or None,
        gradient_clip_algorithm="norm",
        default_root_dir=str(train_dir(spec)),
        logger=False,
        use_distributed_sampler=False,
        fast_dev_run=bool(train.is_dry_run),
    )
    if train.iters_per_epoch:
        settings["limit_train_batches"] = train.iters_per_epoch
    return settings


def checkpoint_callbacks(spec: DictConfig, directory: Path, metric: str) -> list[SpecCheckpoint]:
    """Every-interval checkpoints with the latest link, and the best one by the target metric."""
    interval = spec.train.checkpoint_interval
    by_step = spec.train.checkpoint_interval_unit == "step"
    periodic = SpecCheckpoint(
        dirpath=directory,
        filename=CHECKPOINT_NAME,
        save_top_k=-1,
        save_last="link",
        every_n_train_steps=interval if by_step else None,
        every_n_epochs=None if by_step else interval,
        save_on_train_epoch_end=True,
    )
    best = SpecCheckpoint(
        dirpath=directory, filename=BEST_NAME, monitor=f"val/{metric}", mode=spec.automl.mode, save_top_k=1
    )
    return [periodic, best]


def resume_checkpoint(spec: DictConfig) -> str | None:
    """train.resume_training_checkpoint_path, else the latest checkpoint of this results_dir."""
    path = spec.train.resume_training_checkpoint_path
    if not path:
        latest = train_dir(spec) / f"{LATEST_NAME}.pth"
        if not latest.exists():
            return None
        path = str(latest)
    read_checkpoint(path)  # a missing, pickled or corrupt file is a one-line error before any work
    return path


def seed_everything(spec: DictConfig) -> None:
    pl.seed_everything(spec.train.seed if spec.train.seed >= 0 else None, workers=True, verbose=False)
    torch.backends.cudnn.benchmark = spec.train.cudnn.benchmark
    torch.backends.cudnn.deterministic = spec.train.cudnn.deterministic
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = spec.train.allow_tf32


def run_training(
    spec: DictConfig,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    keep_checkpoints: bool = True,
    data: SharedData | None = None,
    **trainer_overrides: Any,
) -> TrainResult:
    """Train as the spec says (resuming when it can) and return the run's metrics and checkpoints.

    keep_checkpoints=False leaves checkpointing to the caller (a sweep trial reports its own to
    Tune). data: the sweep's decoded label map and annotations, used when they fit the spec.
    trainer_overrides replace Trainer arguments (a Ray Train worker passes Ray's strategy).
    """
    seed_everything(spec)
    resume = resume_checkpoint(spec)
    if data is not None and data.fits(spec):
        label_map, datamodule = data.label_map, build_datamodule(spec, data.label_map, readers=data.readers)
    else:
        label_map = build_label_map(spec)
        datamodule = build_datamodule(spec, label_map)
    module = build_module(spec, label_map)
    if spec.train.pretrained_model_path:
        load_weights(module.model, spec.train.pretrained_model_path, skip_mismatched=True)  # fine-tuning may replace the class head
    directory = train_dir(spec)
    metric = target_metric(spec)
    tracker = BestMetrics(metric, spec.automl.mode)
    saving = checkpoint_callbacks(spec, directory, metric) if keep_checkpoints else []
    bars = [RichProgressBar(leave=True)] if progress else []
    plugins = [AtomicCheckpointIO(), *trainer_overrides.pop("plugins", [])]
    trainer = pl.Trainer(
        **{**trainer_settings(spec), **trainer_overrides},
        callbacks=[AttachSpec(spec), RngState(), ValidateLastEpoch(), *saving, tracker, *bars, *callbacks],
        plugins=plugins,
        enable_progress_bar=progress,
        enable_checkpointing=keep_checkpoints,  # else Lightning adds its own epoch=*.ckpt files
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    latest = directory / f"{LATEST_NAME}.pth"
    best = saving[1].best_model_path if saving else ""
    return TrainResult(
        metrics=tracker.last,
        best_metrics=tracker.best,
        best_checkpoint=Path(best) if best else None,
        latest_checkpoint=latest.resolve() if latest.exists() else None,
    )

