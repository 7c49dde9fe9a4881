"""The metrics of one evaluation pass for a task: PQ, mIoU and mask AP from per-image outputs.

Every task reports mIoU; panoptic adds PQ/SQ/RQ and the mask AP of things; instance adds AP.
Predictions and ground truth are dicts of numpy arrays at the original image size:

    prediction: semantic (H, W) class ids; panoptic (H, W) segment ids + segments [{id, category_id}];
                instances {masks (N, H, W) bool, scores (N,), labels (N,)}
    ground truth: semantic (H, W) class ids, 255 = ignore; panoptic (H, W) + segments
                [{id, category_id, iscrowd}]; instances {masks, labels, iscrowd}
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from model.data.label_map import IGNORE_LABEL
from model.metrics import MaskAP, PanopticQuality, SemanticMetrics
from model.tasks import check_task


class SegmentationEvaluator:
    """Streams images into the metrics of `task`; `sync` merges them across processes.

    Args:
        task: panoptic | instance | semantic.
        is_thing: per class (train id 0..K-1), whether it is a thing.
    """

    def __init__(self, task: str, is_thing: Sequence[bool]):
        check_task(task)
        self.task = task
        self.is_thing = [bool(t) for t in is_thing]
        self.reset()

    def reset(self) -> None:
        classes = range(len(self.is_thing))
        self.semantic = SemanticMetrics(len(self.is_thing), ignore_index=IGNORE_LABEL)
        self.panoptic = PanopticQuality(dict(zip(classes, self.is_thing))) if self.task == "panoptic" else None
        things = [c for c in classes if self.is_thing[c]] if self.task == "panoptic" else list(classes)
        self.mask_ap = MaskAP(things) if self.task in ("panoptic", "instance") and things else None

    def update(self, prediction: dict[str, Any], ground_truth: dict[str, Any]) -> None:
        self.semantic.update(_numpy(prediction["semantic"]), _numpy(ground_truth["semantic"]))
        if self.panoptic is not None:
            self.panoptic.update(
                _numpy(prediction["panoptic"]), prediction["segments"], _numpy(ground_truth["panoptic"]), ground_truth["segments"]
            )
        if self.mask_ap is not None:
            pred, gt = prediction["instances"], ground_truth["instances"]
            keep = np.isin(_numpy(gt["labels"]), self.mask_ap.category_ids)
            self.mask_ap.update(
                _numpy(pred["masks"]),
                _numpy(pred["scores"]),
                _numpy(pred["labels"]),
                _numpy(gt["masks"])[keep],
                _numpy(gt["labels"])[keep],
                _numpy(gt["iscrowd"])[keep],
            )

    def sync(self, strategy: Any = None) -> None:
        """Merge every process's accumulated state (no-op in a single process)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        device = strategy.root_device if strategy is not None else torch.device("cpu")
        for metric in (self.semantic, self.panoptic):
            if metric is not None:
                state = torch.as_tensor(metric.state(), dtype=torch.float64, device=device)
                dist.all_reduce(state)
                metric.load_state(state.cpu().numpy().astype(metric.state().dtype))
        if self.mask_ap is not None:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.mask_ap.state())
            self.mask_ap.load_state([record for part in gathered for record in part])

    def compute(self) -> dict[str, float]:
        """A flat dict of every score (percent); headline keys have no '/'."""
        metrics = dict(self.semantic.compute())
        if self.panoptic is not None:
            metrics.update(self.panoptic.compute())
        if self.mask_ap is not None:
            metrics.update(self.mask_ap.compute())
        return metrics


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
