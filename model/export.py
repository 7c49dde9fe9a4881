"""Mask2Former as one deployable graph: RGB pixels in, the task's post-processed outputs out.

`DeployableMask2Former` wraps the network with the input normalisation and a tensor-only
post-processing (no data-dependent shapes or Python loops), so ONNX, AOTInductor and TensorRT
carry the whole model and a runtime needs nothing of this repository. Its outputs, named as the
reference exporter names them, all at the input resolution (H, W):

    semantic  pred_masks   (B, K, H, W) float  per-class scores (class probability x mask probability,
                                               summed over queries); argmax over K is the label map
    instance  pred_masks   (B, T, H, W) bool   the top-T (query, class) pairs' masks (mask logit > 0)
              pred_scores  (B, T) float        class probability x mean mask probability inside the mask
              pred_classes (B, T) int64        class index 0..K-1
    panoptic  prob_masks   (B, Q, H, W) float  score x mask probability of the kept queries (best class
                                               not no-object, score > object_mask_threshold), 0 elsewhere
              pred_masks   (B, Q, H, W) bool   each query's segment: the pixels it owns (argmax of
                                               prob_masks) where its mask probability >= 0.5; empty for
                                               a query not kept or owning < overlap_threshold of its mask
              pred_scores  (B, Q) float        the query's best class probability
              pred_classes (B, Q) int64        the query's best class, K = no-object

T = min(test_topk_per_image, Q x K). `prediction_from_outputs` turns one image's outputs into the
prediction dict of `model.postprocess.Postprocessor` at the original image size, so evaluation and
the output writers treat a deployed model like the PyTorch one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.data.transforms import pad_bottom_right, resize
from model.errors import UserError
from model.tasks import check_task

INPUT_NAME = "inputs"
OUTPUT_NAMES = {
    "semantic": ("pred_masks",),
    "instance": ("pred_masks", "pred_scores", "pred_classes"),
    "panoptic": ("prob_masks", "pred_masks", "pred_scores", "pred_classes"),
}
SIZE_MULTIPLE = 32  # the coarsest feature map is 1/32 of the input


class DeployableMask2Former(nn.Module):
    """(B, 3, H, W) float RGB on the 0..255 scale -> the outputs of `task` (module docstring), a tuple in OUTPUT_NAMES order.

    Args:
        network: a `model.mask2former.Mask2Former` in eval mode.
        task: semantic | instance | panoptic.
        pixel_mean, pixel_std: per-channel statistics on the 0..1 scale (the spec's dataset.pixel_*).
        object_mask_threshold, overlap_threshold: panoptic rules (see `model.postprocess.panoptic_inference`).
        test_topk_per_image: instance: pairs returned per image.
    """

    def __init__(
        self,
        network: nn.Module,
        task: str,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        *,
        object_mask_threshold: float = 0.4,
        overlap_threshold: float = 0.5,
        test_topk_per_image: int = 100,
    ):
        super().__init__()
        check_task(task)
        self.network, self.task = network, task
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.test_topk_per_image = test_topk_per_image

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.network((inputs - self.pixel_mean) / self.pixel_std)
        class_logits = outputs["pred_logits"].float()
        mask_logits = F.interpolate(outputs["pred_masks"].float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        if self.task == "semantic":
            return (semantic_scores(class_logits, mask_logits),)
        if self.task == "instance":
            return instance_topk(class_logits, mask_logits, self.test_topk_per_image)
        return panoptic_queries(class_logits, mask_logits, self.object_mask_threshold, self.overlap_threshold)


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, Q, K+1), (B, Q, H, W) -> (B, K, H, W): class probabilities (no-object dropped) x mask probabilities, summed over queries."""
    return torch.einsum("bqk,bqhw->bkhw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())


def instance_topk(class_logits: torch.Tensor, mask_logits: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k (query, class) pairs of each image, batched `model.postprocess.instance_inference`.

    (B, Q, K+1), (B, Q, H, W) -> masks (B, T, H, W) bool, scores (B, T), classes (B, T) int64.
    """
    num_queries, num_classes = class_logits.shape[1], class_logits.shape[2] - 1
    probs = class_logits.softmax(-1)[..., :-1].flatten(1)  # (B, Q * K), query-major
    scores, index = probs.topk(min(topk, num_queries * num_classes), dim=1)
    classes, queries = index % num_classes, index // num_classes
    height, width = mask_logits.shape[-2:]
    logits = mask_logits.gather(1, queries[:, :, None, None].expand(-1, -1, height, width))
    masks = logits > 0
    inside = masks.to(logits.dtype)
    mask_scores = (logits.sigmoid() * inside).flatten(2).sum(2) / (inside.flatten(2).sum(2) + 1e-6)
    return masks, scores * mask_scores, classes


def panoptic_queries(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, object_mask_threshold: float, overlap_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rules of `model.postprocess.panoptic_inference` on whole batches with fixed shapes.

    (B, Q, K+1), (B, Q, H, W) -> prob_masks, pred_masks, pred_scores, pred_classes (module docstring).
    The merge of one stuff class's queries into one segment is left to the reader (`segments_from_queries`).
    """
    num_queries, num_classes = class_logits.shape[1], class_logits.shape[2] - 1
    scores, classes = class_logits.softmax(-1).max(-1)  # (B, Q)
    keep = (classes != num_classes) & (scores > object_mask_threshold)
    probs = mask_logits.sigmoid()
    weighted = scores[:, :, None, None] * probs
    kept = keep[:, :, None, None]
    owner = torch.where(kept, weighted, -1.0).argmax(1)  # (B, H, W): among kept queries only
    owned = owner[:, None] == torch.arange(num_queries, device=owner.device)[None, :, None, None]  # (B, Q, H, W)
    confident = probs >= 0.5
    segment = owned & confident
    mask_area = owned.flatten(2).sum(2)
    original_area = confident.flatten(2).sum(2)
    segment_area = segment.flatten(2).sum(2)
    valid = keep & (segment_area > 0) & (original_area > 0) & (mask_area >= overlap_threshold * original_area)
    return torch.where(kept, weighted, 0.0), segment & valid[:, :, None, None], scores, classes


def smallest_input_size(network: nn.Module, height: int, width: int) -> tuple[int, int] | None:
    """None when the network runs at (height, width); else the smallest (h, w) of the same aspect, multiples of 32, that does.

    Sizes must be multiples of 32 (the coarsest stride) and large enough for every stage to keep at least one
    pixel of every feature map once windowed attention and the deformable encoder's levels are applied; this
    probes the network with one zero image per candidate instead of restating each module's rule.
    """

    def runs(h: int, w: int) -> bool:
        try:
            with torch.inference_mode():
                network(torch.zeros(1, 3, h, w, device=next(network.parameters()).device))
            return True
        except (RuntimeError, ValueError, IndexError):
            return False

    if height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0 and runs(height, width):
        return None
    for scale in range(1, 1024):
        h = SIZE_MULTIPLE * max(1, math.ceil(scale * height / max(height, width)))
        w = SIZE_MULTIPLE * max(1, math.ceil(scale * width / max(height, width)))
        if h >= height and w >= width and h % SIZE_MULTIPLE == 0 and runs(h, w):
            return h, w
    raise UserError(f"no input size from {height}x{width} up runs this network")


def fit_size(height: int, width: int, box: Sequence[int]) -> tuple[int, int]:
    """(h, w) of an image (height, width) shrunk to fit inside box (H, W), aspect kept (never enlarged)."""
    scale = min(1.0, box[0] / height, box[1] / width)
    return max(1, min(box[0], int(height * scale + 0.5))), max(1, min(box[1], int(width * scale + 0.5)))


def _to_original(maps: torch.Tensor, image_size: Sequence[int], orig_size: Sequence[int]) -> torch.Tensor:
    """(N, H, W) maps at the input resolution -> the valid (h, w) corner resized to orig_size (H0, W0).

    Scores are resized bilinearly, boolean masks by nearest neighbour (they stay masks).
    """
    valid = maps[None, :, : int(image_size[0]), : int(image_size[1])]
    size = (int(orig_size[0]), int(orig_size[1]))
    if maps.dtype == torch.bool:
        return F.interpolate(valid.float(), size=size, mode="nearest-exact")[0] > 0.5
    return F.interpolate(valid.float(), size=size, mode="bilinear", align_corners=False)[0]


def segments_from_queries(
    pred_masks: torch.Tensor, pred_scores: torch.Tensor, pred_classes: torch.Tensor, is_thing: Sequence[bool]
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Panoptic segment ids (H, W) int32 (0 = void) and [{id, category_id, isthing, score}] from one image's
    per-query segments (Q, H, W) bool; the queries of one stuff class form one segment (scored as its best)."""
    panoptic = torch.zeros(pred_masks.shape[-2:], dtype=torch.int32, device=pred_masks.device)
    segments: list[dict[str, Any]] = []
    stuff: dict[int, dict[str, Any]] = {}
    present = pred_masks.flatten(1).any(1).tolist()
    for query, (label, score) in enumerate(zip(pred_classes.tolist(), pred_scores.tolist())):
        if not present[query]:
            continue
        if label in stuff:
            info = stuff[label]
            info["score"] = max(info["score"], score)
        else:
            info = {"id": len(segments) + 1, "category_id": label, "isthing": bool(is_thing[label]), "score": score}
            segments.append(info)
            if not info["isthing"]:
                stuff[label] = info
        panoptic[pred_masks[query]] = info["id"]
    return panoptic, segments


def prediction_from_outputs(
    outputs: dict[str, torch.Tensor], task: str, image_size: Sequence[int], orig_size: Sequence[int], is_thing: Sequence[bool]
) -> dict[str, Any]:
    """One image's graph outputs (named as OUTPUT_NAMES, batch dimension removed) -> the prediction dict of
    `model.postprocess.Postprocessor` at the original size (H0, W0).

    image_size: (h, w) of the image inside the padded input; orig_size: (H0, W0).
    Semantic task gives "sem_seg" (K, H0, W0) and "semantic"; instance and panoptic tasks have no per-class
    scores, so their "semantic" map is the class of each pixel's most confident instance (instance) or kept
    query (panoptic; where no kept query covers a pixel, of the most confident query); panoptic "instances"
    are its thing segments.
    """
    if task == "semantic":
        sem_seg = _to_original(outputs["pred_masks"], image_size, orig_size)
        return {"sem_seg": sem_seg, "semantic": sem_seg.argmax(0)}
    masks = _to_original(outputs["pred_masks"], image_size, orig_size)
    scores, classes = outputs["pred_scores"].float(), outputs["pred_classes"].long()
    if task == "instance":
        ranked = (scores[:, None, None] * masks).argmax(0) if len(scores) else torch.zeros(masks.shape[-2:], dtype=torch.long)
        semantic = classes[ranked] if len(classes) else ranked
        return {"semantic": semantic, "instances": {"masks": masks, "scores": scores, "labels": classes}}
    num_classes = len(is_thing)
    probs = _to_original(outputs["prob_masks"], image_size, orig_size)
    # A pixel no kept query covers has all-zero scores, whose argmax is query 0 whatever it is (often
    # a "no object" query): it takes the class of the image's most confident query of a real class.
    most_confident = int(torch.where(classes < num_classes, scores, -1.0).argmax())
    owner = torch.where(probs.amax(0) > 0, probs.argmax(0), most_confident)
    panoptic, segments = segments_from_queries(masks, scores, classes, is_thing)
    things = [q for q, present in enumerate(masks.flatten(1).any(1).tolist()) if present and int(classes[q]) < num_classes and is_thing[int(classes[q])]]
    chosen = torch.tensor(things, dtype=torch.long, device=masks.device)
    return {
        "semantic": classes[owner].clamp(max=num_classes - 1),
        "panoptic": panoptic,
        "segments": segments,
        "instances": {"masks": masks[chosen], "scores": scores[chosen], "labels": classes[chosen]},
    }


def letterbox(image: torch.Tensor, box: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image (3, h, w) uint8, shrunk to fit box (H, W) if larger (aspect kept) and zero-padded at the bottom
    and right to (3, H, W); returns it with the (h', w') of its content. Zero padding on the 0..255 scale is
    what evaluation batches carry, so the deployed graph sees the inputs the network was scored on."""
    size = fit_size(image.shape[-2], image.shape[-1], box)
    image, _ = resize(image, torch.zeros((0, *image.shape[-2:]), dtype=torch.bool), size)
    return pad_bottom_right(image, box), size
