"""Semantic segmentation scores (mIoU, fwIoU, pixel and mean class accuracy) from a streamed confusion matrix.

Scores are percentages, 0..100. Pixels whose gt is `ignore_index` are not counted.
"""

from __future__ import annotations

import numpy as np

from model.errors import UserError

SUMMARY = ("mIoU", "fwIoU", "pACC", "mACC")  # compute()'s headline scores


class SemanticMetrics:
    """Confusion matrix over a stream of label maps; `state()` is that matrix, and states add up across processes.

    confusion[g, p]: number of pixels of gt class g predicted as class p, classes 0..num_classes-1.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise UserError(f"semantic metrics need num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (or a batch): pred and gt are integer class maps of one shape, e.g. (H, W)."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise UserError(f"prediction and ground truth label maps differ in shape: {pred.shape} vs {gt.shape}")
        counted = gt != self.ignore_index
        gt_labels, pred_labels = gt[counted].astype(np.int64), pred[counted].astype(np.int64)
        for name, labels in (("ground truth", gt_labels), ("prediction", pred_labels)):
            bad = (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                raise UserError(
                    f"{name} holds class ids {np.unique(labels[bad]).tolist()} outside 0..{self.num_classes - 1} "
                    f"(ignore_index is {self.ignore_index})"
                )
        self._confusion += np.bincount(
            gt_labels * self.num_classes + pred_labels, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)

    def merge(self, other: SemanticMetrics) -> None:
        """Add the confusion matrix of `other` (same number of classes)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge semantic metrics of {other.num_classes} classes into {self.num_classes}")
        self._confusion += other._confusion

    def state(self) -> np.ndarray:
        """A copy of the confusion matrix, int64 (num_classes, num_classes), rows gt, columns prediction."""
        return self._confusion.copy()

    def load_state(self, state: np.ndarray) -> None:
        """Replace the confusion matrix with `state`, e.g. the all-reduced sum of every process's state."""
        state = np.asarray(state)
        if state.shape != self._confusion.shape:
            raise ValueError(f"semantic state must have shape {self._confusion.shape}, got {state.shape}")
        self._confusion = state.astype(np.int64)

    def compute(self) -> dict[str, float]:
        """mIoU, fwIoU, pACC, mACC and per-class `IoU/<class>`, in percent.

        A class absent from both gt and prediction has no IoU (NaN per class, left out of mIoU);
        a class absent from gt is left out of mACC. A score over no pixel is NaN.
        """
        true_positive = np.diag(self._confusion).astype(np.float64)
        gt_pixels = self._confusion.sum(1).astype(np.float64)
        union = gt_pixels + self._confusion.sum(0) - true_positive
        iou = np.divide(true_positive, union, out=np.full(self.num_classes, np.nan), where=union > 0)
        accuracy = np.divide(true_positive, gt_pixels, out=np.full(self.num_classes, np.nan), where=gt_pixels > 0)
        total = gt_pixels.sum()
        has_iou, in_gt = union > 0, gt_pixels > 0
        scores = (
            float(iou[has_iou].mean()) if has_iou.any() else float("nan"),
            float((gt_pixels[in_gt] * iou[in_gt]).sum() / total) if total else float("nan"),
            float(true_positive.sum() / total) if total else float("nan"),
            float(accuracy[in_gt].mean()) if in_gt.any() else float("nan"),
        )
        results = {name: 100 * value for name, value in zip(SUMMARY, scores)}
        results.update({f"IoU/{c}": float(100 * iou[c]) for c in range(self.num_classes)})
        return results
