"""The torch Dataset of segmentation training and evaluation, over any annotation format.

A format reader (`CocoPanopticReader`, `CocoInstanceReader`, `AdeReader`) knows its files and turns one
image's annotation into an `Annotation`; `SegmentationDataset` decodes the image, picks the targets of
the task, augments image and masks together and returns the item dict. Decoding and augmentation run
in the DataLoader's workers.

Item (`dataset[i]`):
    image      (3, h, w) uint8, after augmentation
    labels     (N,) int64 train ids
    masks      (N, h, w) bool, one per target (instances that the augmentation removed are dropped)
    image_id, file_name, index
    orig_size  (H0, W0) of the image file; size (h, w) of the image content after resizing (before padding)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from model.data.files import read_image_size, read_rgb
from model.data.label_map import LabelMap
from model.data.targets import Annotation, ground_truth, training_targets
from model.tasks import check_task
from model.data.transforms import Transformed

Transform = Callable[[torch.Tensor, torch.Tensor], Transformed]


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset: its id in the annotations, its name there, and where it is on disk."""

    image_id: int | str
    file_name: str
    path: Path


class AnnotationReader(Protocol):
    """What a format provides: its label map, its images, and each image's annotation."""

    label_map: LabelMap
    images: list[ImageRecord]

    def read_annotation(self, index: int, image_size: tuple[int, int]) -> Annotation:
        """The annotation of image `index`, whose file is image_size (H0, W0); raises UserError on bad data."""
        ...

    def label_file(self, index: int) -> Path | None:
        """The label image of image `index`, of the image's size (None where the labels are in the JSON)."""
        ...


class SegmentationDataset(Dataset):
    """Items for training or evaluation (see the module docstring) and original-resolution ground truth.

    reader: the format's annotations; transform: an augmentation of `model.data.transforms`;
    task: 'panoptic' | 'instance' | 'semantic', which decides the targets.
    """

    def __init__(self, reader: AnnotationReader, transform: Transform, task: str) -> None:
        check_task(task)
        self.reader = reader
        self.transform = transform
        self.task = task

    @property
    def label_map(self) -> LabelMap:
        return self.reader.label_map

    def __len__(self) -> int:
        return len(self.reader.images)

    def read_image(self, index: int) -> np.ndarray:
        """Image `index` as stored, (H0, W0, 3) uint8 RGB."""
        return read_rgb(self.reader.images[index].path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.reader.images[index]
        image = self.read_image(index)
        orig_size = (image.shape[0], image.shape[1])
        masks, labels = training_targets(self.reader.read_annotation(index, orig_size), self.task)
        image_t, masks_t, size = self.transform(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks))
        present = masks_t.flatten(1).any(1)
        return {
            "image": image_t.contiguous(),
            "labels": torch.from_numpy(labels)[present],
            "masks": masks_t[present].contiguous(),
            "image_id": record.image_id,
            "file_name": record.file_name,
            "orig_size": orig_size,
            "size": size,
            "index": index,
        }

    def ground_truth(self, index: int) -> dict[str, Any]:
        """Image `index`'s ground truth at its original resolution, numpy arrays (see `model.data.targets.ground_truth`)."""
        size = read_image_size(self.reader.images[index].path)
        return ground_truth(self.reader.read_annotation(index, size))
