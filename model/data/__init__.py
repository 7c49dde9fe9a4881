"""Segmentation data: COCO panoptic, COCO instance and ADE-style semantic datasets, their augmentations and batches.

`build_dataset` turns the spec's dataset section into a `SegmentationDataset`; `build_dataloader` batches
it with `collate`. Items, batches and ground truth are described in `model.data.dataset`,
`model.data.loader` and `model.data.targets`.
"""

from model.data.archives import resolve_dir, resolve_file
from model.data.build import DATASET_TYPES, TRAIN_AUGMENTATIONS, build_dataset
from model.data.check import check_dataset
from model.data.dataset import SegmentationDataset
from model.data.label_map import IGNORE_LABEL, LabelMap
from model.data.loader import build_dataloader, collate
from model.data.synthetic import write_synthetic_dataset
from model.data.targets import MODES

__all__ = [
    "DATASET_TYPES",
    "IGNORE_LABEL",
    "MODES",
    "TRAIN_AUGMENTATIONS",
    "LabelMap",
    "SegmentationDataset",
    "build_dataloader",
    "build_dataset",
    "check_dataset",
    "collate",
    "resolve_dir",
    "resolve_file",
    "write_synthetic_dataset",
]
