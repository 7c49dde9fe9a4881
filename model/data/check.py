"""A pass over a dataset before training: every file validated and classes counted.

`check_dataset` (`automl data check`) decodes every image and label; `check_files` (the pre-flight of
`automl launch`) reads headers and PNG checksums only, which finds corrupt files and label images of
the wrong size without decoding a pixel. Both run after building the dataset has checked its
annotation files, ids and categories.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.data.dataset import SegmentationDataset
from model.data.files import read_image_size, verify_image
from model.data.label_map import IGNORE_LABEL
from model.errors import UserError


def check_files(dataset: SegmentationDataset) -> None:
    """Every image and label image opens with intact PNG chunks, and each label image has its image's size."""
    for index, record in enumerate(dataset.reader.images):
        verify_image(record.path)
        label = dataset.reader.label_file(index)
        if label is None:
            continue
        verify_image(label)
        image_size, label_size = read_image_size(record.path), read_image_size(label)
        if label_size != image_size:
            raise UserError(
                f"{label}: label image is {label_size[0]}x{label_size[1]} (HxW) but its image {record.path} is "
                f"{image_size[0]}x{image_size[1]}; expected the same size"
            )


def check_dataset(dataset: SegmentationDataset) -> dict[str, Any]:
    """Decode every image and its ground truth (raising the first UserError), and count the classes.

    Returns {"images": number of images, "classes": [{"id", "train_id", "name", "isthing", "images", "instances",
    "crowd"}]} with one entry per label-map category: the images it appears in, its segments that are
    not crowd (for semantic data: one per image it appears in) and its crowd segments.
    """
    label_map = dataset.label_map
    counts = {train_id: {"images": 0, "instances": 0, "crowd": 0} for train_id in label_map.train_id_to_id}
    for index in range(len(dataset)):
        dataset.read_image(index)
        truth = dataset.ground_truth(index)
        if "segments" in truth:
            labels = np.array([s["category_id"] for s in truth["segments"]], np.int64)
            crowd = np.array([s["iscrowd"] for s in truth["segments"]], bool)
        else:
            labels = np.unique(truth["semantic"])
            labels = labels[labels != IGNORE_LABEL]
            crowd = np.zeros(labels.shape, bool)
        for train_id in np.unique(labels).tolist():
            counts[train_id]["images"] += 1
        for train_id, is_crowd in zip(labels.tolist(), crowd.tolist()):
            counts[train_id]["crowd" if is_crowd else "instances"] += 1
    classes = [
        {
            "id": label_map.train_id_to_id[train_id],
            "train_id": train_id,
            "name": label_map.names[train_id],
            "isthing": label_map.isthing[train_id],
            **counts[train_id],
        }
        for train_id in sorted(counts)
    ]
    return {"images": len(dataset), "classes": classes}
