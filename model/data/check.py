"""A pass over a dataset before training: every file validated and classes counted.

`automl data check` decodes every image; the pre-flight of `automl launch` checks image headers (and
PNG checksums) instead, which finds missing, corrupt and mismatched files in a fraction of the time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.data.dataset import SegmentationDataset
from model.data.files import verify_image
from model.data.label_map import IGNORE_LABEL


def check_dataset(dataset: SegmentationDataset, decode_images: bool = True) -> dict[str, Any]:
    """Read every image and its ground truth (raising the first UserError), and count the classes.

    decode_images=False checks each image's header and PNG checksums instead of decoding its pixels;
    the ground truth (annotations, label PNGs, their sizes against the image's) is read either way.

    Returns {"images": number of images, "classes": [{"id", "train_id", "name", "isthing", "images", "instances",
    "crowd"}]} with one entry per label-map category: the images it appears in, its segments that are
    not crowd (for semantic data: one per image it appears in) and its crowd segments.
    """
    label_map = dataset.label_map
    counts = {train_id: {"images": 0, "instances": 0, "crowd": 0} for train_id in label_map.train_id_to_id}
    for index in range(len(dataset)):
        if decode_images:
            dataset.read_image(index)
        else:
            verify_image(dataset.reader.images[index].path)
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
