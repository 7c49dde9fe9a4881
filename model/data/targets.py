"""One image's annotation at its original resolution, and the two things made from it.

`training_targets` gives the masks and classes the model learns for a task (panoptic, instance, semantic);
`ground_truth` gives what the metrics score against (semantic map, panoptic map and segments,
instances). Every format reader produces the same `Annotation`, so these rules live here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data.label_map import IGNORE_LABEL


@dataclass(frozen=True)
class Annotation:
    """The segments of one image at its original resolution (H0, W0).

    masks: (S, H0, W0) bool, one per segment; later segments lie on top where masks overlap.
    labels: (S,) int64 train ids. iscrowd, isthing: (S,) bool.
    segment_ids: (S,) int64 distinct positive ids (for COCO panoptic data the PNG's ids).
    has_instances: False for semantic data, whose segments are whole classes rather than objects.
    """

    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    isthing: np.ndarray
    segment_ids: np.ndarray
    has_instances: bool


def training_targets(annotation: Annotation, task: str) -> tuple[np.ndarray, np.ndarray]:
    """The masks (N, H0, W0) bool and train ids (N,) int64 the model learns for `task`; crowd regions are never targets.

    panoptic: every segment; instance: thing segments only; semantic: one mask per class present.
    """
    keep = ~annotation.iscrowd
    if task == "instance":
        keep &= annotation.isthing
    masks, labels = annotation.masks[keep], annotation.labels[keep]
    if task == "semantic":
        classes = np.unique(labels)
        masks = np.stack([masks[labels == c].any(0) for c in classes]) if classes.size else masks
        labels = classes
    present = masks.any((1, 2))
    return masks[present], labels[present].astype(np.int64)


def _top_segment(masks: np.ndarray) -> np.ndarray:
    """(H, W) index of the last segment covering each pixel, -1 where none does."""
    if masks.shape[0] == 0:
        return np.full(masks.shape[1:], -1, np.int64)
    last_from_top = masks[::-1].argmax(0)
    return np.where(masks.any(0), masks.shape[0] - 1 - last_from_top, -1)


def ground_truth(annotation: Annotation) -> dict[str, Any]:
    """What evaluation scores against, at the original resolution.

    semantic: (H0, W0) int64 train ids, IGNORE_LABEL (255) on crowd and unlabelled pixels.
    With instances also: panoptic (H0, W0) int32 segment ids (0 = void), segments [{id, category_id (train id),
    iscrowd, isthing}], instances {masks (N, H0, W0) bool, labels (N,) int64, iscrowd (N,) bool} of the things.
    """
    top = _top_segment(annotation.masks)  # -1 indexes the appended "nothing" entry below
    semantic_of_segment = np.where(annotation.iscrowd, IGNORE_LABEL, annotation.labels)
    result: dict[str, Any] = {"semantic": np.append(semantic_of_segment, IGNORE_LABEL).astype(np.int64)[top]}
    if not annotation.has_instances:
        return result
    result["panoptic"] = np.append(annotation.segment_ids, 0).astype(np.int32)[top]
    result["segments"] = [
        {"id": int(i), "category_id": int(c), "iscrowd": int(crowd), "isthing": bool(thing)}
        for i, c, crowd, thing in zip(annotation.segment_ids, annotation.labels, annotation.iscrowd, annotation.isthing)
    ]
    things = annotation.isthing
    result["instances"] = {
        "masks": annotation.masks[things],
        "labels": annotation.labels[things].astype(np.int64),
        "iscrowd": annotation.iscrowd[things],
    }
    return result
