"""Panoptic quality (PQ = SQ x RQ) scored image by image exactly as the COCO panoptic API scores it.

`PanopticQuality` streams images into per-class counts that merge across processes;
`pq_from_coco_files` scores COCO panoptic files (JSON + PNG folders). Scores are percentages, 0..100.

The COCO rules, for one image:
- void is gt id 0 and any gt pixel whose id has no entry in the gt segments; pred id 0 is "no segment";
- a gt segment and a pred segment of the same category match when IoU > 0.5, with
  IoU = |g & p| / (|g| + |p| - |g & p| - |p & void|) (the pred's void pixels leave the union);
- crowd gt segments (iscrowd=1) never match and are never false negatives;
- an unmatched gt segment is a false negative; an unmatched pred segment is a false positive unless
  more than half of it lies on void or on crowd segments of its own category;
- per class PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP (0 without TP),
  RQ = TP / (TP + FP/2 + FN/2); All / Things / Stuff are means over the classes with TP + FP + FN > 0.
Two generalisations where COCO data never differs: the crowd pixels of an unmatched pred are summed
over every crowd segment of its category (COCO keeps one per category), and segment areas come from
the PNG (COCO reads the gt areas from the JSON, equal for valid files); a gt segment missing from its
PNG is therefore not counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.errors import UserError

_TP, _FP, _FN, _IOU = range(4)
_MAX_ID = 256**3

QUALITIES = ("PQ", "SQ", "RQ")
CLASS_SUBSETS = ("", "_th", "_st")  # all classes, things, stuff
SUMMARY = tuple(quality + subset for subset in CLASS_SUBSETS for quality in QUALITIES)  # compute()'s headline scores


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours (H, W, 3) -> segment ids (H, W) int64, id = R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb, dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids (H, W) in [0, 256^3) -> COCO panoptic PNG colours (H, W, 3) uint8; inverse of `rgb_to_id`."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _MAX_ID):
        raise ValueError(f"segment ids must lie in [0, {_MAX_ID}) to fit in an RGB PNG, got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def _segment_slots(ids: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slot of every pixel: 1 + index of its segment in `segment_ids`, or 0 when no segment has its id.

    ids: (P,) pixel ids; segment_ids: (S,) distinct ids. Returns slots (P,) int64 and a (P,) bool mask
    of the pixels with a non-zero id that no segment claims.
    """
    if segment_ids.size == 0:
        return np.zeros(ids.shape, np.int64), ids != 0
    order = np.argsort(segment_ids)
    position = np.minimum(np.searchsorted(segment_ids[order], ids), segment_ids.size - 1)
    known = segment_ids[order][position] == ids
    return np.where(known, order[position] + 1, 0), ~known & (ids != 0)


class PanopticQuality:
    """Per-class TP / FP / FN / sum of matched IoU over a stream of images, and PQ, SQ, RQ from them.

    categories: category id -> isthing. The state is a float64 array (num_classes, 4) of
    [tp, fp, fn, iou_sum] rows in ascending category id order; states of disjoint image sets add up.
    """

    def __init__(self, categories: dict[int, bool]) -> None:
        if not categories:
            raise UserError("panoptic quality needs at least one category (id -> isthing), got none")
        self.category_ids = np.array(sorted(int(c) for c in categories), dtype=np.int64)
        self.isthing = np.array([bool(categories[c]) for c in self.category_ids.tolist()])
        self._index = {c: i for i, c in enumerate(self.category_ids.tolist())}
        self._stats = np.zeros((self.category_ids.size, 4), np.float64)

    def _class_index(self, category_id: Any, where: str) -> int:
        if category_id not in self._index:
            raise UserError(
                f"{where} has category_id {category_id!r}, not one of the categories {self.category_ids.tolist()}"
            )
        return self._index[category_id]

    def _segment_table(
        self, segments: list[dict[str, Any]], what: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """segments_info -> ids (S,) int64, class indices (S,) int64, iscrowd (S,) bool."""
        try:
            ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
            classes = np.array(
                [self._class_index(s["category_id"], f"{what} segment {s['id']}") for s in segments], dtype=np.int64
            )
            crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments], dtype=bool)
        except KeyError as err:
            raise UserError(f"every {what} segment needs an 'id' and a 'category_id'; one lacks {err}") from err
        if (ids == 0).any():
            raise UserError(f"{what} segment id 0 is reserved for void pixels; number segments from 1")
        if np.unique(ids).size != ids.size:
            raise UserError(f"{what} segment ids repeat in segments_info: {ids.tolist()}")
        return ids, classes, crowd

    def update(
        self,
        pred_ids: np.ndarray,
        pred_segments: list[dict[str, Any]],
        gt_ids: np.ndarray,
        gt_segments: list[dict[str, Any]],
    ) -> None:
        """Add one image.

        pred_ids, gt_ids: (H, W) integer segment ids (e.g. `rgb_to_id` of the PNGs).
        pred_segments: [{"id", "category_id"}] for every non-zero id of pred_ids, and only those.
        gt_segments: [{"id", "category_id", "iscrowd"}] (iscrowd defaults to 0).
        """
        pred_ids, gt_ids = np.asarray(pred_ids), np.asarray(gt_ids)
        if pred_ids.ndim != 2 or pred_ids.shape != gt_ids.shape:
            raise UserError(
                "prediction and ground truth must be (H, W) id maps of one size, "
                f"got {pred_ids.shape} and {gt_ids.shape}"
            )
        pred_seg, pred_cls, _ = self._segment_table(pred_segments, "prediction")
        gt_seg, gt_cls, gt_crowd = self._segment_table(gt_segments, "ground truth")

        pred_flat = pred_ids.ravel().astype(np.int64)
        pred_slot, unlisted = _segment_slots(pred_flat, pred_seg)
        if unlisted.any():
            raise UserError(
                f"prediction segment ids {np.unique(pred_flat[unlisted]).tolist()} are in the PNG "
                "but have no entry in segments_info"
            )
        gt_slot, _ = _segment_slots(gt_ids.ravel().astype(np.int64), gt_seg)

        # intersection[i, j]: pixels of gt slot i and pred slot j; slot 0 is void / no segment.
        n_pred_slots = pred_seg.size + 1
        intersection = np.bincount(
            gt_slot * n_pred_slots + pred_slot, minlength=(gt_seg.size + 1) * n_pred_slots
        ).reshape(gt_seg.size + 1, n_pred_slots)
        pred_area, gt_area = intersection.sum(0)[1:], intersection.sum(1)[1:]
        if (pred_area == 0).any():
            raise UserError(
                f"prediction segment ids {pred_seg[pred_area == 0].tolist()} are in segments_info "
                "but not in the PNG"
            )
        overlap, pred_void = intersection[1:, 1:], intersection[0, 1:]  # (G, P), (P,)

        same_class = gt_cls[:, None] == pred_cls[None, :]
        candidate = same_class & ~gt_crowd[:, None] & (overlap > 0)
        union = gt_area[:, None] + pred_area[None, :] - overlap - pred_void[None, :]
        iou = np.where(candidate, overlap / np.maximum(union, 1), 0.0)
        gt_match, pred_match = np.nonzero(iou > 0.5)  # IoU > 0.5 makes every match one-to-one

        num_classes = self.category_ids.size
        matched_cls = gt_cls[gt_match]
        self._stats[:, _TP] += np.bincount(matched_cls, minlength=num_classes)
        self._stats[:, _IOU] += np.bincount(matched_cls, weights=iou[gt_match, pred_match], minlength=num_classes)

        missed = np.ones(gt_seg.size, bool)
        missed[gt_match] = False
        missed &= ~gt_crowd & (gt_area > 0)
        self._stats[:, _FN] += np.bincount(gt_cls[missed], minlength=num_classes)

        on_own_crowd = (overlap * (same_class & gt_crowd[:, None])).sum(0)
        spurious = np.ones(pred_seg.size, bool)
        spurious[pred_match] = False
        spurious &= (pred_void + on_own_crowd) / pred_area <= 0.5
        self._stats[:, _FP] += np.bincount(pred_cls[spurious], minlength=num_classes)

    def merge(self, other: PanopticQuality) -> None:
        """Add the counts of `other` (same categories), e.g. from another process or data shard."""
        if not (np.array_equal(self.category_ids, other.category_ids) and np.array_equal(self.isthing, other.isthing)):
            raise ValueError("cannot merge panoptic quality over different categories")
        self._stats += other._stats

    def state(self) -> np.ndarray:
        """A copy of the counts, float64 (num_classes, 4): [tp, fp, fn, iou_sum] per class; sums across processes."""
        return self._stats.copy()

    def load_state(self, state: np.ndarray) -> None:
        """Replace the counts with `state` (num_classes, 4), e.g. the all-reduced sum of every process's state."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != self._stats.shape:
            raise ValueError(f"panoptic state must have shape {self._stats.shape}, got {state.shape}")
        self._stats = state.copy()

    def compute(self) -> dict[str, float]:
        """PQ, SQ, RQ in percent over all classes, things (`_th`) and stuff (`_st`), and per class (`PQ/<id>`, ...).

        A class with no TP, FP or FN is left out of the means and is NaN per class; a mean over no class is NaN.
        """
        tp, fp, fn, iou_sum = self._stats.T
        counted = tp + fp + fn > 0
        weighted = tp + 0.5 * fp + 0.5 * fn
        nan = np.full(tp.shape, np.nan)
        per_class = dict(zip(QUALITIES, (
            100 * np.divide(iou_sum, weighted, out=nan.copy(), where=counted),
            100 * np.where(counted, np.divide(iou_sum, tp, out=np.zeros_like(tp), where=tp > 0), np.nan),
            100 * np.divide(tp, weighted, out=nan.copy(), where=counted),
        )))
        results: dict[str, float] = {}
        for suffix, rows in zip(CLASS_SUBSETS, (counted, counted & self.isthing, counted & ~self.isthing)):
            for name, values in per_class.items():
                results[name + suffix] = float(values[rows].mean()) if rows.any() else float("nan")
        for index, category_id in enumerate(self.category_ids.tolist()):
            for name, values in per_class.items():
                results[f"{name}/{category_id}"] = float(values[index])
        return results


def _read_json(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from err


def _read_id_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return rgb_to_id(np.asarray(image.convert("RGB")))
    except OSError as err:
        raise UserError(f"cannot read the panoptic PNG {path}: {err}") from err


def pq_from_coco_files(
    gt_json: str | Path,
    gt_png_dir: str | Path,
    pred_json: str | Path,
    pred_png_dir: str | Path,
    categories: dict[int, bool] | None = None,
) -> dict[str, float]:
    """Score COCO panoptic predictions (JSON + PNG folder) against COCO panoptic ground truth, image by image.

    Every gt annotation needs a prediction with its image_id; predictions of other images are ignored.
    categories: id -> isthing; by default the gt JSON's `categories` (`isthing` 0/1).
    Returns `PanopticQuality.compute()`.
    """
    gt, pred = _read_json(gt_json), _read_json(pred_json)
    try:
        if categories is None:
            categories = {int(c["id"]): bool(c["isthing"]) for c in gt["categories"]}
        predictions = {a["image_id"]: a for a in pred["annotations"]}
        gt_annotations = gt["annotations"]
    except KeyError as err:
        raise UserError(f"{gt_json} / {pred_json}: COCO panoptic JSON lacks the key {err}") from err
    metric = PanopticQuality(categories)
    for gt_ann in gt_annotations:
        image_id = gt_ann["image_id"]
        if image_id not in predictions:
            raise UserError(f"{pred_json} has no prediction for image_id {image_id} of {gt_json}")
        pred_ann = predictions[image_id]
        try:
            metric.update(
                _read_id_png(Path(pred_png_dir) / pred_ann["file_name"]),
                pred_ann["segments_info"],
                _read_id_png(Path(gt_png_dir) / gt_ann["file_name"]),
                gt_ann["segments_info"],
            )
        except KeyError as err:
            raise UserError(f"image_id {image_id}: annotation lacks the key {err}") from err
        except UserError as err:
            raise UserError(f"image_id {image_id} ({pred_json}): {err}") from err
    return metric.compute()
