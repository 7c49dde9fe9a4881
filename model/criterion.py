"""Mask2Former's training losses: classification and point-sampled mask losses on matched queries.

After Hungarian matching, every query is trained to predict its target's class (or no-object);
each matched query's mask is trained with sigmoid BCE and dice on points chosen where the
predicted mask is most uncertain. With deep supervision every decoder layer's prediction
gets the same losses.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.matcher import HungarianMatcher, Indices
from model.point_sampling import calculate_uncertainty, point_sample, uncertain_point_coords

_AUX_SUFFIX = re.compile(r"_\d+$")  # loss_ce_3: loss_ce of auxiliary prediction 3


class SetCriterion(nn.Module):
    """Matches predictions to targets and computes the unweighted losses of every prediction set.

    Args:
        num_classes: K, the number of classes without no-object.
        matcher: assigns queries to targets.
        class_weight, mask_weight, dice_weight: weights of loss_ce, loss_mask and loss_dice.
        no_object_weight: cross-entropy weight of the no-object class (the others weigh 1).
        num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask losses
            (see `model.point_sampling.uncertain_point_coords`).
        deep_supervision: also compute the losses of the auxiliary predictions.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        # the weight of each loss; the auxiliary loss loss_x_i weighs as loss_x
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points, self.oversample_ratio, self.importance_sample_ratio = num_points, oversample_ratio, importance_sample_ratio
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: dict, targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Unweighted losses of the final and (with deep supervision) every auxiliary prediction.

        Args:
            outputs: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w) and "aux_outputs", a list
                of dicts of the two (the earlier decoder layers' predictions).
            targets: B dicts of "labels" (N_i,) int64 in 0..K-1 and "masks" (N_i, H, W) bool/uint8
                over the padded input, one H, W for the batch (the loader pads them like the images;
                any resolution: masks are compared at normalised points).

        Returns {loss_ce, loss_mask, loss_dice} of the final prediction and the same keys with
        suffix _0, _1, ... for the auxiliary ones.
        """
        sets = [outputs] + (list(outputs.get("aux_outputs", [])) if self.deep_supervision else [])
        indices = self.matcher.match_all(sets, targets)
        device = outputs["pred_logits"].device
        num_masks = self._num_masks(targets, device)
        (set_index, image, query, target), counts = _matches_on_device(indices, targets, device)
        # every image's targets in one tensor, addressed by the global target index
        labels = torch.cat([t["labels"] for t in targets]).to(device)[target]
        target_masks = torch.cat([t["masks"] for t in targets]).to(device)
        loss_ce = self.loss_labels(torch.stack([p["pred_logits"] for p in sets]), set_index, image, query, labels)
        loss_mask, loss_dice = self.loss_masks(
            [p["pred_masks"] for p in sets], counts, set_index, image, query, target_masks[target], num_masks
        )
        losses = {}
        for i in range(len(sets)):
            suffix = "" if i == 0 else f"_{i - 1}"
            losses[f"loss_ce{suffix}"], losses[f"loss_mask{suffix}"], losses[f"loss_dice{suffix}"] = loss_ce[i], loss_mask[i], loss_dice[i]
        return losses

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: the sum of `losses` times their weights."""
        return sum(self.weight_dict[_AUX_SUFFIX.sub("", name)] * value for name, value in losses.items())

    def loss_labels(
        self, logits: torch.Tensor, set_index: torch.Tensor, image: torch.Tensor, query: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """(S,) cross-entropies of every set's logits (S, B, Q, K+1) against the labels (M,) of the
        matched (set, image, query) triples, no-object elsewhere; per set the class-weighted mean."""
        target_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[set_index, image, query] = labels
        per_query = F.cross_entropy(
            logits.float().flatten(0, 1).transpose(1, 2), target_classes.flatten(0, 1), self.empty_weight, reduction="none"
        )  # (S*B, Q), each term times its class weight
        return per_query.view(len(logits), -1).sum(1) / self.empty_weight[target_classes].view(len(logits), -1).sum(1)

    def loss_masks(
        self,
        masks: Sequence[torch.Tensor],
        counts: Sequence[int],
        set_index: torch.Tensor,
        image: torch.Tensor,
        query: torch.Tensor,
        target_masks: torch.Tensor,
        num_masks: torch.Tensor | float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(S,) sigmoid BCEs and dice losses, each summed over a set's matched masks / num_masks.

        masks: per set (B, Q, h, w); counts: matched pairs per set; set_index, image, query: (M,)
        the pairs, set by set; target_masks: (M, H, W) the target of each pair.
        """
        if len(image) == 0:
            zero = torch.stack([m.sum() * 0.0 for m in masks])  # keeps the masks in the graph
            return zero, zero
        matched = torch.cat(
            [m[i, q] for m, i, q in zip(masks, image.split(counts), query.split(counts))]
        ).float()[:, None]  # (M, 1, h, w)
        with torch.no_grad():
            coords = uncertain_point_coords(
                matched, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )  # (M, P, 2)
            # each target at its prediction's points, a set at a time (the float masks of all sets can be GBs)
            labels = torch.cat(
                [point_sample(t[:, None].float(), c)[:, 0] for t, c in zip(target_masks.split(counts), coords.split(counts))]
            )  # (M, P)
        logits = point_sample(matched, coords)[:, 0]  # (M, P)
        per_set = logits.new_zeros(2, len(masks)).index_add_(
            1, set_index, torch.stack([sigmoid_bce_loss(logits, labels), dice_loss(logits, labels)])
        )
        return per_set[0] / num_masks, per_set[1] / num_masks

    def _num_masks(self, targets: Sequence[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        """Targets in the batch, averaged over processes when distributed, at least 1 (a tensor: no host sync)."""
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            num_masks = num_masks / dist.get_world_size()
        return num_masks.clamp(min=1)


def sigmoid_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(M,) point-averaged sigmoid BCE of each mask's logits (M, P) against labels (M, P) in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(M,) 1 - (2|p t| + 1) / (|p| + |t| + 1) of each mask, p = sigmoid(logits) (M, P)."""
    p = logits.sigmoid()
    return 1 - (2 * (p * labels).sum(-1) + 1) / (p.sum(-1) + labels.sum(-1) + 1)


def _matches_on_device(
    indices: Sequence[Indices], targets: Sequence[dict[str, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """The matched pairs of all prediction sets, set by set, as (set, image, query, target) index rows
    (4, M) on `device` (target: global over the batch's concatenated targets), and the pairs per set;
    one host-to-device copy for all."""
    offsets = torch.tensor([0] + [len(t["labels"]) for t in targets]).cumsum(0)
    per_set = [
        torch.cat([torch.stack([torch.full_like(q, s), torch.full_like(q, b), q, j + offsets[b]]) for b, (q, j) in enumerate(set_indices)], 1)
        for s, set_indices in enumerate(indices)
    ]
    rows = torch.cat(per_set, 1)
    rows = rows.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else rows.to(device)
    return rows, [m.shape[1] for m in per_set]
