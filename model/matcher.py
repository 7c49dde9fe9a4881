"""Hungarian matching of Mask2Former's queries to an image's ground-truth masks, on sampled points.

The cost of giving query q the target n is

    cost_class * -p_q(label_n) + cost_mask * BCE(mask_q, mask_n) + cost_dice * dice(mask_q, mask_n),

both mask costs taken over num_points uniform random points shared by the image's queries and
targets; scipy's linear_sum_assignment then finds the cheapest one-to-one assignment.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from model.errors import UserError
from model.point_sampling import point_sample

Indices = list[tuple[torch.Tensor, torch.Tensor]]  # per image: (query indices, target indices)
BAD_COST = 1e9  # stands in for a non-finite cost so a diverged network reaches the loss, not scipy


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets that minimises the weighted cost above.

    Args:
        cost_class, cost_mask, cost_dice: weights of the classification, sigmoid BCE and dice costs.
        num_points: points sampled per image to compare masks.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise UserError("the matcher needs a non-zero cost: cost_class, cost_mask and cost_dice are all 0")
        if num_points < 1:
            raise UserError(f"the matcher's num_points must be at least 1, got {num_points}")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]) -> Indices:
        """Matches one prediction set; see `match_all`."""
        return self.match_all([outputs], targets)[0]

    @torch.no_grad()
    def match_all(
        self, prediction_sets: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]
    ) -> list[Indices]:
        """Matches every prediction set (the final one and the auxiliary ones) with one device-to-host copy.

        Args:
            prediction_sets: S dicts, each with
                "pred_logits": (B, Q, K+1) class logits, no-object last;
                "pred_masks": (B, Q, h, w) mask logits.
            targets: B dicts, each with
                "labels": (N_i,) int64 classes in 0..K-1;
                "masks": (N_i, H, W) bool or uint8 masks over the same (padded) image; N_i may be 0.

        Every set is compared on the same points of an image (one draw per image).
        Returns S lists of B pairs (query indices, target indices), int64 CPU tensors of length
        min(Q, N_i): query query_indices[j] is assigned target target_indices[j].
        """
        masks = prediction_sets[0]["pred_masks"]
        batch_size, device = masks.shape[0], masks.device
        sizes = [len(t["labels"]) for t in targets]
        with torch.autocast(device.type, enabled=False):
            coords = torch.rand(batch_size, self.num_points, 2, device=device)
            labels, target_points = self._padded_targets(targets, coords)
            # every set's queries side by side, (B, S*Q, ...): one cost computation for all sets
            logits = torch.cat([p["pred_logits"].float() for p in prediction_sets], 1)
            points = torch.cat([point_sample(p["pred_masks"].float(), coords) for p in prediction_sets], 1)
            costs = self._cost(logits, points, labels, target_points)
        costs = costs.view(batch_size, len(prediction_sets), masks.shape[1], costs.shape[-1]).transpose(0, 1)
        costs = costs.nan_to_num(BAD_COST, BAD_COST, -BAD_COST).cpu()  # (S, B, Q, max N_i): the one sync
        return [[_assign(cost[i, :, : sizes[i]]) for i in range(batch_size)] for cost in costs]

    def _padded_targets(self, targets: Sequence[dict[str, torch.Tensor]], coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B, N) and target masks at the points (B, N, P), zero-padded to N = max N_i."""
        batch_size, num_points, device = coords.shape[0], coords.shape[1], coords.device
        n = max((len(t["labels"]) for t in targets), default=0)
        labels = torch.zeros(batch_size, n, dtype=torch.int64, device=device)
        points = torch.zeros(batch_size, n, num_points, device=device)
        for i, target in enumerate(targets):
            count = len(target["labels"])
            if count:
                labels[i, :count] = target["labels"]
                # the masks as the channels of one map: one sampling call per image
                points[i, :count] = point_sample(target["masks"].to(device, torch.float32)[None], coords[i : i + 1])[0]
        return labels, points

    def _cost(self, logits: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, target_points: torch.Tensor) -> torch.Tensor:
        """(B, Q, N) costs from logits (B, Q, K+1), mask logits at the points x (B, Q, P), labels (B, N), targets (B, N, P)."""
        prob = logits.softmax(-1)
        cost_class = -prob.gather(2, labels[:, None, :].expand(-1, prob.shape[1], -1))

        t = target_points.transpose(1, 2)  # (B, P, N)
        # sigmoid BCE(x, t) = softplus(x) - x t, averaged over the points
        cost_mask = (F.softplus(x).sum(-1, keepdim=True) - x @ t) / x.shape[-1]

        p = x.sigmoid()
        cost_dice = 1 - (2 * p @ t + 1) / (p.sum(-1, keepdim=True) + t.sum(1, keepdim=True) + 1)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice


def _assign(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cheapest assignment for a (Q, N) CPU cost matrix, as int64 (query, target) index tensors."""
    queries, targets = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(queries, dtype=torch.int64), torch.as_tensor(targets, dtype=torch.int64)
