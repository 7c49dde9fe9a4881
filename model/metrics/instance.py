"""Mask AP (the COCO `segm` protocol of pycocotools' COCOeval) over instances accumulated image by image.

`MaskAP` keeps every image's masks as RLE and builds the COCO objects in memory when it computes;
`ap_from_coco_files` scores a COCO results JSON against a COCO instance gt JSON. Scores are percentages,
0..100; a score COCO leaves undefined (-1: no gt in that class or area range) is NaN.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from model.errors import UserError

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # compute()'s headline scores: the first six COCOeval stats


@dataclass(frozen=True)
class _ImageRecord:
    """One image's instances: RLE masks with their labels, gt crowd flags and prediction scores."""

    height: int
    width: int
    gt_rles: list[dict[str, Any]]
    gt_labels: np.ndarray  # (N,) int64
    gt_crowd: np.ndarray  # (N,) bool
    pred_rles: list[dict[str, Any]]
    pred_labels: np.ndarray  # (M,) int64
    pred_scores: np.ndarray  # (M,) float64


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Binary masks (N, H, W) -> N COCO compressed RLEs {"size": [H, W], "counts": str}, as COCO JSON files hold them."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # pycocotools wants (H, W, N)
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


def _coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over an in-memory dataset dict."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate(gt: COCO, detections: list[dict[str, Any]]) -> dict[str, float]:
    """COCOeval(segm) of `detections` (COCO results: image_id, category_id, RLE segmentation, score) on `gt`.

    Returns AP, AP50, AP75, APs, APm, APl and `AP/<category id>` (area all, 100 detections), in percent.
    """
    if not gt.getImgIds() or not gt.getCatIds():
        return {name: float("nan") for name in SUMMARY}
    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            results = gt.loadRes(detections)
        else:  # loadRes refuses an empty list; no detection scores 0 where gt exists
            results = _coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []})
        evaluator = COCOeval(gt, results, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    scores = {name: float(100 * s) if s > -1 else float("nan") for name, s in zip(SUMMARY, evaluator.stats)}
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (iou thresholds, recall points, classes)
    for k, category_id in enumerate(evaluator.params.catIds):
        defined = precision[:, :, k][precision[:, :, k] > -1]
        scores[f"AP/{category_id}"] = float(100 * defined.mean()) if defined.size else float("nan")
    return scores


class MaskAP:
    """COCO mask AP over a stream of images.

    category_ids: the classes to score (a dict id -> name works too); by default every class seen in gt or
    predictions. The state is the list of per-image records; states of disjoint image sets concatenate.
    """

    def __init__(self, category_ids: Iterable[int] | None = None) -> None:
        self.category_ids = None if category_ids is None else sorted(int(c) for c in category_ids)
        self._images: list[_ImageRecord] = []

    def update(
        self,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
        pred_labels: np.ndarray,
        gt_masks: np.ndarray,
        gt_labels: np.ndarray,
        gt_iscrowd: np.ndarray | None = None,
    ) -> None:
        """Add one image.

        pred_masks: (M, H, W) bool; pred_scores: (M,) float; pred_labels: (M,) category ids.
        gt_masks: (N, H, W) bool; gt_labels: (N,) category ids; gt_iscrowd: (N,) bool, default all False.
        """
        pred_masks, gt_masks = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
        pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        pred_labels = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        gt_crowd = np.zeros(len(gt_labels), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool).reshape(-1)
        if pred_masks.ndim != 3 or gt_masks.ndim != 3 or pred_masks.shape[1:] != gt_masks.shape[1:]:
            raise UserError(f"masks must be (N, H, W) of one image size, got {pred_masks.shape} and {gt_masks.shape}")
        if not len(pred_masks) == len(pred_scores) == len(pred_labels):
            raise UserError(
                f"{len(pred_masks)} predicted masks need as many scores and labels, "
                f"got {len(pred_scores)} and {len(pred_labels)}"
            )
        if not len(gt_masks) == len(gt_labels) == len(gt_crowd):
            raise UserError(
                f"{len(gt_masks)} gt masks need as many labels and iscrowd flags, "
                f"got {len(gt_labels)} and {len(gt_crowd)}"
            )
        if self.category_ids is not None:
            unknown = np.setdiff1d(np.concatenate([pred_labels, gt_labels]), self.category_ids)
            if unknown.size:
                raise UserError(f"category ids {unknown.tolist()} are not among the categories {self.category_ids}")
        height, width = gt_masks.shape[1:]
        self._images.append(
            _ImageRecord(
                height, width, encode_rle(gt_masks), gt_labels, gt_crowd, encode_rle(pred_masks), pred_labels, pred_scores
            )
        )

    def merge(self, other: MaskAP) -> None:
        """Append the images of `other` (same categories), e.g. from another process or data shard."""
        if other.category_ids != self.category_ids:
            raise ValueError("cannot merge mask AP over different categories")
        self._images.extend(other._images)

    def state(self) -> list[_ImageRecord]:
        """The accumulated per-image records (picklable); gather them across processes and concatenate."""
        return list(self._images)

    def load_state(self, state: list[_ImageRecord]) -> None:
        """Replace the accumulated images with `state`, e.g. the concatenation of every process's state."""
        self._images = list(state)

    def compute(self) -> dict[str, float]:
        """AP (IoU 0.50:0.95), AP50, AP75, APs, APm, APl and per-class `AP/<id>`, in percent."""
        category_ids = self.category_ids
        if category_ids is None:
            seen = [r.gt_labels for r in self._images] + [r.pred_labels for r in self._images]
            category_ids = np.unique(np.concatenate(seen)).tolist() if seen else []
        images, annotations, detections = [], [], []
        for image_id, record in enumerate(self._images, start=1):
            images.append({"id": image_id, "height": record.height, "width": record.width})
            for rle, label, crowd, area in zip(
                record.gt_rles, record.gt_labels.tolist(), record.gt_crowd.tolist(), mask_utils.area(record.gt_rles)
            ):
                annotations.append(
                    {
                        "id": len(annotations) + 1,  # COCOeval takes id 0 for "unmatched"
                        "image_id": image_id,
                        "category_id": label,
                        "segmentation": rle,
                        "area": float(area),
                        "iscrowd": int(crowd),
                    }
                )
            for rle, label, score in zip(record.pred_rles, record.pred_labels.tolist(), record.pred_scores.tolist()):
                detections.append({"image_id": image_id, "category_id": label, "segmentation": rle, "score": score})
        gt = _coco({"images": images, "categories": [{"id": c} for c in category_ids], "annotations": annotations})
        return _evaluate(gt, detections)


def ap_from_coco_files(gt_json: str | Path, results_json: str | Path) -> dict[str, float]:
    """Score a COCO results JSON (image_id, category_id, RLE segmentation, score) against a COCO instance gt JSON.

    Classes are the gt JSON's categories. Returns what `MaskAP.compute()` returns.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(gt_json))
        with open(results_json, encoding="utf-8") as file:
            detections = json.load(file)
    except OSError as err:
        raise UserError(f"cannot read {err.filename}: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"not valid JSON ({gt_json} or {results_json}): {err}") from err
    if not isinstance(detections, list):
        raise UserError(f"{results_json} must hold a list of COCO results, got {type(detections).__name__}")
    images, categories = set(gt.getImgIds()), set(gt.getCatIds())
    for index, detection in enumerate(detections):
        segmentation = detection.get("segmentation") if isinstance(detection, dict) else None
        if not isinstance(segmentation, dict) or "counts" not in segmentation or "score" not in detection:
            raise UserError(
                f"{results_json}: result {index} needs a 'score' and an RLE 'segmentation' {{size, counts}}"
            )
        if detection.get("image_id") not in images:
            raise UserError(
                f"{results_json}: result {index} has image_id {detection.get('image_id')!r}, not in {gt_json}"
            )
        if detection.get("category_id") not in categories:
            raise UserError(
                f"{results_json}: result {index} has category_id {detection.get('category_id')!r}, not in {gt_json}"
            )
    return _evaluate(gt, detections)
