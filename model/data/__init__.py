"""Segmentation data: COCO panoptic, COCO instance and ADE-style semantic datasets, their augmentations and batches.

`build_dataset` reads one split's files into a `SegmentationDataset` (with a `build_transform` augmentation); `build_dataloader` batches
it with `collate`. Items, batches and ground truth are described in `model.data.dataset`,
`model.data.loader` and `model.data.targets`.
"""

from model.data.archives import resolve_dir, resolve_file
from model.data.build import DATASET_TYPES, TRAIN_AUGMENTATIONS, build_dataset, build_transform
from model.data.check import check_dataset, check_files
from model.data.dataset import SegmentationDataset
from model.data.label_map import IGNORE_LABEL, LabelMap
from model.data.loader import build_dataloader, collate
from model.data.synthetic import write_synthetic_dataset

__all__ = [
    "DATASET_TYPES",
    "IGNORE_LABEL",
    "TRAIN_AUGMENTATIONS",
    "LabelMap",
    "SegmentationDataset",
    "build_dataloader",
    "build_dataset",
    "build_transform",
    "check_dataset",
    "check_files",
    "collate",
    "resolve_dir",
    "resolve_file",
    "write_synthetic_dataset",
]
