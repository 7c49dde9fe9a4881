"""A split's files -> a SegmentationDataset; augmentation settings -> its transform.

`build_dataset` reads one of the three annotation formats with the files it names, for a task;
`build_transform` gives the training or evaluation augmentation. Both take explicit arguments
and name the argument in their errors (`model.errors.ArgumentError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from model.data.ade import AdeReader
from model.data.archives import resolve_dir, resolve_file
from model.data.coco_instance import CocoInstanceReader
from model.data.coco_panoptic import CocoPanopticReader
from model.data.dataset import AnnotationReader, SegmentationDataset, Transform
from model.data.label_map import LabelMap
from model.data.transforms import LargeScaleJitter, ResizeCrop, ResizeShortestEdge
from model.errors import ArgumentError

# The files each annotation format needs (build_dataset's arguments).
REQUIRED_PATHS = {
    "coco_panoptic": ("img_dir", "panoptic_json", "panoptic_dir"),
    "coco": ("img_dir", "instance_json"),
    "ade": ("root_dir",),
}
DATASET_TYPES = tuple(REQUIRED_PATHS)
TRAIN_AUGMENTATIONS = ("resize_crop", "lsj")


def build_dataset(
    dataset_type: str,
    *,
    task: str,
    label_map: LabelMap,
    transform: Transform,
    cache_root: str | Path,
    img_dir: str | Path = "",
    panoptic_json: str | Path = "",
    panoptic_dir: str | Path = "",
    instance_json: str | Path = "",
    root_dir: str | Path = "",
    annot_file: str = "",
) -> SegmentationDataset:
    """The dataset of one split.

    Args:
        dataset_type: 'coco_panoptic' (img_dir, panoptic_json, panoptic_dir), 'coco' (img_dir,
            instance_json) or 'ade' (root_dir, optional annot_file relative to it).
        task: 'panoptic' | 'instance' | 'semantic', which decides the targets.
        label_map: the categories and their train ids.
        transform: from `build_transform`.
        cache_root: where .tar/.tar.gz image and PNG folders are extracted and object-storage URIs
            (any path may be an fsspec URI such as s3://bucket/key) downloaded.
    """
    paths = {"img_dir": img_dir, "panoptic_json": panoptic_json, "panoptic_dir": panoptic_dir, "instance_json": instance_json, "root_dir": root_dir}
    if dataset_type not in REQUIRED_PATHS:
        raise ArgumentError("dataset_type", f"{dataset_type!r}; expected one of {list(DATASET_TYPES)}")
    for name in REQUIRED_PATHS[dataset_type]:
        if not paths[name]:
            raise ArgumentError(name, f"empty, but dataset type {dataset_type!r} needs it")
    folder = {name: resolve_dir(paths[name], cache_root) for name in ("img_dir", "panoptic_dir", "root_dir") if paths[name]}
    reader: AnnotationReader
    if dataset_type == "coco_panoptic":
        reader = CocoPanopticReader(folder["img_dir"], resolve_file(panoptic_json, cache_root), folder["panoptic_dir"], label_map=label_map)
    elif dataset_type == "coco":
        reader = CocoInstanceReader(folder["img_dir"], resolve_file(instance_json, cache_root), label_map=label_map)
    else:
        reader = AdeReader(folder["root_dir"], annot_file, label_map=label_map)
    return SegmentationDataset(reader=reader, transform=transform, task=task)


def build_transform(
    is_train: bool,
    *,
    train_augmentation: str = "resize_crop",
    train_min_size: Sequence[int] = (640,),
    train_max_size: int = 2560,
    train_crop_size: Sequence[int] = (640, 640),
    test_min_size: int = 640,
    test_max_size: int = 640,
    lsj_min_scale: float = 0.1,
    lsj_max_scale: float = 2.0,
) -> Transform:
    """Training augmentation ('resize_crop': shortest edge from train_min_size, at most train_max_size,
    then a random train_crop_size crop; 'lsj': large-scale jitter to train_crop_size, resized by a factor in
    [lsj_min_scale, lsj_max_scale]), or the
    evaluation resize (shortest edge test_min_size, longest at most test_max_size)."""
    if not is_train:
        return ResizeShortestEdge(test_min_size, test_max_size)
    crop_size = list(train_crop_size)
    if len(crop_size) != 2:
        raise ArgumentError("train_crop_size", f"{crop_size}; expected [height, width]")
    if train_augmentation == "resize_crop":
        if not train_min_size:
            raise ArgumentError("train_min_size", "empty; expected a list of shortest-edge sizes")
        return ResizeCrop(list(train_min_size), train_max_size, crop_size)
    if train_augmentation == "lsj":
        return LargeScaleJitter(crop_size, lsj_min_scale, lsj_max_scale)
    raise ArgumentError("train_augmentation", f"{train_augmentation!r}; expected one of {list(TRAIN_AUGMENTATIONS)}")
