"""The one place that reads the spec's `dataset` section: a split's config -> a SegmentationDataset.

Configs are read by attribute access (the spec dataclasses, or `types.SimpleNamespace` in tests), with
the reference key names: dataset.<split>.{type, panoptic_json, instance_json, img_dir, panoptic_dir,
root_dir, annot_file}, dataset.{label_map, contiguous_id, augmentation.*}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.data.ade import AdeReader
from model.data.archives import resolve_dir
from model.data.coco_instance import CocoInstanceReader
from model.data.coco_panoptic import CocoPanopticReader
from model.data.dataset import AnnotationReader, SegmentationDataset, Transform
from model.data.label_map import LabelMap
from model.data.transforms import LargeScaleJitter, ResizeCrop, ResizeShortestEdge
from model.errors import UserError

DATASET_TYPES = ("coco_panoptic", "coco", "ade")
TRAIN_AUGMENTATIONS = ("resize_crop", "lsj")


def _path(value: str, key: str, dataset_type: str) -> Path:
    if not value:
        raise UserError(f"{key} is empty; dataset type {dataset_type!r} needs it")
    return Path(value)


def _reader(split_cfg: Any, key: str, label_map: LabelMap, cache_root: str) -> AnnotationReader:
    dataset_type = split_cfg.type
    if dataset_type == "coco_panoptic":
        return CocoPanopticReader(
            img_dir=resolve_dir(_path(split_cfg.img_dir, f"{key}.img_dir", dataset_type), cache_root),
            panoptic_json=_path(split_cfg.panoptic_json, f"{key}.panoptic_json", dataset_type),
            panoptic_dir=resolve_dir(_path(split_cfg.panoptic_dir, f"{key}.panoptic_dir", dataset_type), cache_root),
            label_map=label_map,
        )
    if dataset_type == "coco":
        return CocoInstanceReader(
            img_dir=resolve_dir(_path(split_cfg.img_dir, f"{key}.img_dir", dataset_type), cache_root),
            instance_json=_path(split_cfg.instance_json, f"{key}.instance_json", dataset_type),
            label_map=label_map,
        )
    if dataset_type == "ade":
        return AdeReader(
            root_dir=resolve_dir(_path(split_cfg.root_dir, f"{key}.root_dir", dataset_type), cache_root),
            annot_file=split_cfg.annot_file,
            label_map=label_map,
        )
    raise UserError(f"{key}.type is {dataset_type!r}; expected one of {list(DATASET_TYPES)}")


def _transform(augmentation: Any, is_train: bool, train_augmentation: str) -> Transform:
    if not is_train:
        return ResizeShortestEdge(augmentation.test_min_size, augmentation.test_max_size)
    crop_size = list(augmentation.train_crop_size)
    if len(crop_size) != 2:
        raise UserError(f"dataset.augmentation.train_crop_size is {crop_size}; expected [height, width]")
    if train_augmentation == "resize_crop":
        if not augmentation.train_min_size:
            raise UserError("dataset.augmentation.train_min_size is empty; expected a list of shortest-edge sizes")
        return ResizeCrop(augmentation.train_min_size, augmentation.train_max_size, crop_size)
    if train_augmentation == "lsj":
        return LargeScaleJitter(crop_size, augmentation.lsj_min_scale, augmentation.lsj_max_scale)
    raise UserError(
        f"dataset.augmentation.train_augmentation is {train_augmentation!r}; expected one of {list(TRAIN_AUGMENTATIONS)}"
    )


def build_dataset(
    split_cfg: Any,
    dataset_cfg: Any,
    mode: str,
    is_train: bool,
    cache_root: str,
    train_augmentation: str = "resize_crop",
    label_map: LabelMap | None = None,
    split: str | None = None,
) -> SegmentationDataset:
    """The dataset of one split, with training or evaluation augmentation.

    split_cfg: dataset.<split>; dataset_cfg: dataset; mode: model.mode; cache_root: where archives are
    extracted; train_augmentation: 'resize_crop' (the reference's) or 'lsj'; label_map: the loaded
    dataset.label_map (loaded here when None); split: the split's name in messages (default 'train' or
    'val' by is_train).
    """
    key = f"dataset.{split or ('train' if is_train else 'val')}"
    if label_map is None:
        label_map_path = _path(dataset_cfg.label_map, "dataset.label_map", split_cfg.type)
        label_map = LabelMap.from_file(label_map_path, dataset_cfg.contiguous_id)
    return SegmentationDataset(
        reader=_reader(split_cfg, key, label_map, cache_root),
        transform=_transform(dataset_cfg.augmentation, is_train, train_augmentation),
        mode=mode,
    )
