"""Reading masks at sparse points: the point-based mask supervision of PointRend, used by Mask2Former.

Points are (x, y) in [0, 1] over the whole map, so one point names the same place in a mask
predicted at 1/4 resolution and in a target mask at full resolution.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of `input` at normalised points.

    input: (N, C, H, W) float maps; coords: (N, P, 2) points (x, y) in [0, 1], (0, 0) the top-left
    corner of the map and (1, 1) its bottom-right corner. Returns (N, C, P).
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (N, P, 1, 2) in grid_sample's [-1, 1]
    return F.grid_sample(input, grid, mode="bilinear", align_corners=False).squeeze(3)


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits: -|logit|, highest (0) on the decision boundary. Any shape."""
    return -logits.abs()


def uncertain_point_coords(
    logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Points biased towards the uncertain regions of each map, with a share of uniform points.

    Draws num_points x oversample_ratio uniform points, keeps the num_points x importance_sample_ratio
    most uncertain of them and fills up to num_points with fresh uniform points.

    logits: (N, 1, H, W); uncertainty_fn maps (N, 1, S) sampled logits to (N, 1, S) uncertainties.
    Returns coords (N, num_points, 2) in [0, 1].
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(num_points * importance_sample_ratio)
    candidates = torch.rand(n, num_sampled, 2, device=logits.device, dtype=logits.dtype)
    uncertainty = uncertainty_fn(point_sample(logits, candidates))[:, 0]  # (N, S)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - num_uncertain, 2, device=logits.device, dtype=logits.dtype)
    return torch.cat([chosen, uniform], dim=1)
