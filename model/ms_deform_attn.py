"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021), as the pixel decoder uses it.

Each query looks at a few learned sampling points around its reference point on every feature
level and takes their softmax-weighted sum. `ms_deform_attn_reference` is the sampling written
with `grid_sample` in plain PyTorch (it runs on any device, exports to ONNX and is the
definition); `ms_deform_attn` runs the Triton kernel of `model.ms_deform_attn_triton`
on CUDA tensors it supports and the reference everywhere else. `MSDeformAttn` is the
attention module around it.
"""

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FUSED_DTYPES = (torch.float32, torch.bfloat16)  # value dtypes the Triton kernel is tested for


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given points and sum them with the given weights.

    The `grid_sample` formulation: any device and dtype, exportable to ONNX, and the definition
    the fused kernel is tested against.

    Args:
        value: (B, S, heads, head_dim), the levels flattened row-major one after the other,
            S = sum(H_l * W_l).
        spatial_shapes: (H_l, W_l) of each level, as Python ints.
        sampling_locations: (B, Lq, heads, L, P, 2), (x, y) in [0, 1] relative to each level
            (0 and 1 are the outer edges of the first and last pixel); points outside read zeros.
        attention_weights: (B, Lq, heads, L, P), normalised over L * P by the caller.

    Returns:
        (B, Lq, heads * head_dim) in value's dtype.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    # bfloat16 values with float32 locations (a bf16-cast model) sample in float32: grid_sample takes one dtype
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    value_per_level = value.to(dtype).split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1] with align_corners=False matching the [0, 1] convention above.
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, heads, D) -> (B*heads, D, H, W)
        value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        # (B, Lq, heads, P, 2) -> (B*heads, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> (B*heads, D, Lq, P)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B, Lq, heads, L, P) -> (B*heads, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*heads, D, Lq)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2).to(value.dtype).contiguous()


@functools.cache
def fused_kernel() -> Callable[..., torch.Tensor] | None:
    """`model.ms_deform_attn_triton.ms_deform_attn_triton`, imported at the first CUDA call (a CPU
    process never loads Triton); None where Triton is missing (it ships with PyTorch's CUDA wheels)."""
    try:
        from model.ms_deform_attn_triton import ms_deform_attn_triton
    except ImportError:
        return None
    return ms_deform_attn_triton


def uses_fused_kernel(value: torch.Tensor) -> bool:
    """Whether `ms_deform_attn` runs the Triton kernel for this value tensor: float32 or bfloat16 on
    CUDA, outside tracing and export (ONNX, torch.export for AOTInductor: those record the reference),
    Triton installed."""
    return (
        value.is_cuda
        and value.dtype in FUSED_DTYPES
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_exporting()
        and fused_kernel() is not None
    )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`ms_deform_attn_reference`'s result, from the fused kernel where `uses_fused_kernel` says so.

    The kernel reads locations and weights in float32 whatever their dtype (a bfloat16 location
    is off by a fraction of a pixel on a large map) and accumulates in float32.
    """
    if uses_fused_kernel(value):
        return fused_kernel()(value, spatial_shapes, sampling_locations.float(), attention_weights.float())
    return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)


@functools.lru_cache(maxsize=64)
def offset_normalizer(spatial_shapes: tuple[tuple[int, int], ...], device: torch.device) -> torch.Tensor:
    """(L, 2) float32 (W_l, H_l) on `device`; cached, so a fixed input size copies it to the device once."""
    # Made outside inference mode: a cached inference tensor would break every later training step in this process.
    with torch.inference_mode(False):
        return torch.tensor([(width, height) for height, width in spatial_shapes], dtype=torch.float32, device=device)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with 2-D reference points.

    Args:
        d_model: channels of queries and values.
        n_levels: feature levels attended.
        n_heads: attention heads (d_model must be divisible by it).
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: head h starts with its points on a ray at angle
        2*pi*h/heads, point k at distance k+1 (in pixels of each level), uniform weights."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Lq, d_model), position embedding already added.
            reference_points: (B, Lq, n_levels, 2), (x, y) in [0, 1] on each level.
            input_flatten: (B, S, d_model), the levels flattened and concatenated.
            spatial_shapes: (H_l, W_l) of each level as Python ints (no device-to-host copy per call).

        Returns:
            (B, Lq, d_model)
        """
        batch, num_queries, _ = query.shape
        _, seq_len, _ = input_flatten.shape
        value = self.value_proj(input_flatten).view(batch, seq_len, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to get [0, 1] units (float32 locations).
        normalizer = offset_normalizer(tuple(spatial_shapes), query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        output = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
