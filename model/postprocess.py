"""Mask2Former's inference: one image's semantic, instance and panoptic results from its query outputs.

The mask logits, predicted at 1/4 of the padded input, are upsampled to the padded input, cropped
to the valid (resized) image and resized to the original image; then each task combines the
queries' class probabilities and masks by the rules of the original implementation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from model.errors import UserError
from model.tasks import check_task

MASK_STRIDE = 4  # the predicted masks are at 1/4 of the padded input


def resize_mask_logits(mask_logits: torch.Tensor, image_size: Sequence[int], orig_size: Sequence[int]) -> torch.Tensor:
    """Mask logits (Q, h, w) at 1/4 of the padded input -> (Q, H0, W0) at the original image size.

    image_size: (H, W) of the resized image inside the padded input; orig_size: (H0, W0).
    """
    h, w = mask_logits.shape[-2:]
    padded = F.interpolate(mask_logits[None], size=(h * MASK_STRIDE, w * MASK_STRIDE), mode="bilinear", align_corners=False)
    valid = padded[:, :, : int(image_size[0]), : int(image_size[1])]
    return F.interpolate(valid, size=(int(orig_size[0]), int(orig_size[1])), mode="bilinear", align_corners=False)[0]


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores (K, H, W): class probabilities (Q, K+1, no-object dropped) x mask probabilities (Q, H, W)."""
    return torch.einsum("qk,qhw->khw", class_logits.softmax(-1)[:, :-1], mask_logits.sigmoid())


def instance_inference(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, topk: int, keep_class: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The top-k (query, class) pairs by class probability, as scored binary masks.

    class_logits: (Q, K+1); mask_logits: (Q, H, W); keep_class: optional (K,) bool, the classes that
    may be returned (the things, for the panoptic task). The score of a pair is its class probability
    times the mean mask probability inside its binary mask (logit > 0).
    Returns {"masks": (N, H, W) bool, "scores": (N,) float, "labels": (N,) int64}, by falling score
    of the class probability, N <= topk.
    """
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)[:, :-1].flatten()  # (Q * K,): query-major
    scores, index = probs.topk(min(topk, probs.numel()))
    labels, queries = index % num_classes, index // num_classes
    if keep_class is not None:
        keep = keep_class.to(labels.device)[labels]
        scores, labels, queries = scores[keep], labels[keep], queries[keep]
    logits = mask_logits[queries]
    masks = logits > 0
    mask_scores = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    return {"masks": masks, "scores": scores * mask_scores, "labels": labels}


def panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    is_thing: Sequence[bool],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Non-overlapping segments from the confident queries.

    A query is kept when its best class is not no-object and its probability exceeds
    object_mask_threshold. Each pixel goes to the kept query of highest score x mask probability;
    a query becomes a segment when it owns pixels, its mask (probability >= 0.5) is not empty and it
    owns at least overlap_threshold of that mask's area; its segment is the pixels it owns where its
    mask probability is >= 0.5. The queries of one stuff class form a single segment.

    class_logits: (Q, K+1); mask_logits: (Q, H, W); is_thing: per class 0..K-1.
    Returns the segment ids (H, W) int32, 0 = void, and segments [{id, category_id, isthing, score}]
    with ids 1, 2, ... in query order (a merged stuff segment scores as its best query).
    """
    num_classes = class_logits.shape[-1] - 1
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    scores, labels, probs = scores[keep], labels[keep], mask_logits[keep].sigmoid()
    n = len(scores)
    if n == 0:
        return torch.zeros(mask_logits.shape[-2:], dtype=torch.int32, device=mask_logits.device), []

    owner = (scores[:, None, None] * probs).argmax(0)  # (H, W): the kept query owning each pixel
    confident = probs >= 0.5  # (n, H, W)
    owner_confident = confident.gather(0, owner[None])[0]  # (H, W): the owner's probability is >= 0.5
    mask_area = torch.bincount(owner.flatten(), minlength=n)  # pixels each query owns
    original_area = confident.flatten(1).sum(1)
    segment_area = torch.bincount(owner[owner_confident], minlength=n)
    stats = torch.stack([mask_area, original_area, segment_area, labels, scores.double()], 1).cpu().tolist()  # one sync

    segment_of_query = [0] * n
    segments: list[dict[str, Any]] = []
    stuff_segments: dict[int, dict[str, Any]] = {}
    for k, (mask_pixels, original_pixels, segment_pixels, label, score) in enumerate(stats):
        if mask_pixels == 0 or original_pixels == 0 or segment_pixels == 0 or mask_pixels / original_pixels < overlap_threshold:
            continue
        label = int(label)
        if label in stuff_segments:
            merged = stuff_segments[label]
            merged["score"] = max(merged["score"], score)
            segment_of_query[k] = merged["id"]
            continue
        info = {"id": len(segments) + 1, "category_id": label, "isthing": bool(is_thing[label]), "score": score}
        segments.append(info)
        segment_of_query[k] = info["id"]
        if not info["isthing"]:
            stuff_segments[label] = info

    ids = torch.tensor(segment_of_query, dtype=torch.int32, device=owner.device)
    panoptic = torch.where(owner_confident, ids[owner], 0)
    return panoptic, segments


class Postprocessor:
    """The prediction of one image for its task, at the original image size.

    Args:
        task: semantic | instance | panoptic.
        num_classes: K.
        is_thing: per class 0..K-1 whether it is a thing; needed for panoptic.
        object_mask_threshold: panoptic: least class probability of a kept query.
        overlap_threshold: panoptic: least share of its mask a query must own to become a segment.
        test_topk_per_image: instance and panoptic: the most instances per image.
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        is_thing: Sequence[bool] | None = None,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
    ):
        check_task(task)
        if is_thing is None and task == "panoptic":
            raise UserError("panoptic post-processing needs is_thing (per class, whether it is a thing), got none")
        if is_thing is not None and len(is_thing) != num_classes:
            raise UserError(f"is_thing has {len(is_thing)} entries, expected one per class ({num_classes})")
        self.task, self.num_classes = task, num_classes
        self.is_thing = None if is_thing is None else [bool(t) for t in is_thing]
        # the classes instance results may have: the things for panoptic (as the original), else all
        self.instance_classes = torch.tensor(self.is_thing) if task == "panoptic" else None
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.test_topk_per_image = test_topk_per_image

    @torch.no_grad()
    def __call__(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, image_size: Sequence[int], orig_size: Sequence[int]
    ) -> dict[str, Any]:
        """One image's outputs -> its prediction at the original size (H0, W0).

        Args:
            class_logits: (Q, K+1), no-object last.
            mask_logits: (Q, h, w) at 1/4 of the padded input.
            image_size: (H, W) of the resized image inside the padded input.
            orig_size: (H0, W0) of the original image.

        Returns (every task) "sem_seg": (K, H0, W0) class scores and "semantic": (H0, W0) int64 argmax;
        (instance, panoptic) "instances": see `instance_inference`, things only for panoptic;
        (panoptic) "panoptic": (H0, W0) int32 segment ids and "segments": see `panoptic_inference`.
        """
        class_logits = class_logits.float()
        mask_logits = resize_mask_logits(mask_logits.float(), image_size, orig_size)
        sem_seg = semantic_inference(class_logits, mask_logits)
        result: dict[str, Any] = {"sem_seg": sem_seg, "semantic": sem_seg.argmax(0)}
        if self.task in ("instance", "panoptic"):
            result["instances"] = instance_inference(class_logits, mask_logits, self.test_topk_per_image, self.instance_classes)
        if self.task == "panoptic":
            result["panoptic"], result["segments"] = panoptic_inference(
                class_logits, mask_logits, self.is_thing, self.object_mask_threshold, self.overlap_threshold
            )
        return result
