"""Multi-scale deformable attention as fused Triton kernels (forward and backward), for CUDA.

Computes exactly what `model.ms_deform_attn.ms_deform_attn_reference` computes (bilinear
sampling with zero padding, grid_sample's align_corners=False convention, a weighted sum over
levels and points) without materialising the (B*heads, D, Lq, L*P) samples: one program
handles a block of queries of one (image, head), gathers the four corner vectors of every
sampling point straight from `value` and accumulates in float32. The backward recomputes the
corners and scatters the value gradient with float32 atomics; the location and weight
gradients are per-point dot products with the output gradient. Values may be float32 or
bfloat16; locations and weights are float32 (the caller upcasts them).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

BLOCK_Q = 64  # queries per program
NUM_WARPS = 4


@triton.jit
def _corner(value_ptr, value_base, row_stride, start, xf, yf, width, height, q_mask, d, d_mask):
    """The value vectors (BLOCK_Q, BLOCK_D) at integer pixel (xf, yf) of a level, zero outside the map.

    The bounds are checked on the float coordinates, so locations far outside (beyond int32
    pixel indices) read zeros too."""
    inside = q_mask & (xf >= 0) & (xf < width) & (yf >= 0) & (yf < height)
    pixel = tl.where(inside, start + yf.to(tl.int64) * width + xf.to(tl.int64), 0)
    ptrs = value_ptr + value_base + pixel[:, None] * row_stride + d[None, :]
    return tl.load(ptrs, mask=inside[:, None] & d_mask[None, :], other=0.0).to(tl.float32), inside, pixel


@triton.jit
def _forward_kernel(
    value_ptr, levels_ptr, loc_ptr, weight_ptr, out_ptr,
    num_queries, seq_len,
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, LEVELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // HEADS
    h = batch_head % HEADS
    q = pid_q * BLOCK + tl.arange(0, BLOCK)
    q_mask = q < num_queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    row_stride = HEADS * HEAD_DIM
    value_base = b.to(tl.int64) * seq_len * row_stride + h * HEAD_DIM
    # (B, Lq, heads, L, P) index of this block's first point
    point_base = ((b.to(tl.int64) * num_queries + q) * HEADS + h) * (LEVELS * POINTS)
    acc = tl.zeros((BLOCK, BLOCK_D), dtype=tl.float32)
    for level in tl.static_range(LEVELS):
        height = tl.load(levels_ptr + 3 * level)
        width = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        for p in tl.static_range(POINTS):
            idx = point_base + level * POINTS + p
            x = tl.load(loc_ptr + 2 * idx, mask=q_mask, other=0.0) * width - 0.5
            y = tl.load(loc_ptr + 2 * idx + 1, mask=q_mask, other=0.0) * height - 0.5
            w = tl.load(weight_ptr + idx, mask=q_mask, other=0.0)
            x0 = tl.floor(x)
            y0 = tl.floor(y)
            fx = x - x0
            fy = y - y0
            v00, _, _ = _corner(value_ptr, value_base, row_stride, start, x0, y0, width, height, q_mask, d, d_mask)
            v01, _, _ = _corner(value_ptr, value_base, row_stride, start, x0 + 1, y0, width, height, q_mask, d, d_mask)
            v10, _, _ = _corner(value_ptr, value_base, row_stride, start, x0, y0 + 1, width, height, q_mask, d, d_mask)
            v11, _, _ = _corner(value_ptr, value_base, row_stride, start, x0 + 1, y0 + 1, width, height, q_mask, d, d_mask)
            top = v00 + fx[:, None] * (v01 - v00)
            bottom = v10 + fx[:, None] * (v11 - v10)
            acc += w[:, None] * (top + fy[:, None] * (bottom - top))
    out_ptrs = out_ptr + ((b.to(tl.int64) * num_queries + q) * HEADS + h)[:, None] * HEAD_DIM + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _scatter(grad_value_ptr, value_base, row_stride, pixel, inside, d, d_mask, contribution):
    ptrs = grad_value_ptr + value_base + pixel[:, None] * row_stride + d[None, :]
    tl.atomic_add(ptrs, contribution, mask=inside[:, None] & d_mask[None, :], sem="relaxed")


@triton.jit
def _backward_kernel(
    value_ptr, levels_ptr, loc_ptr, weight_ptr, grad_out_ptr,
    grad_value_ptr, grad_loc_ptr, grad_weight_ptr,
    num_queries, seq_len,
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, LEVELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // HEADS
    h = batch_head % HEADS
    q = pid_q * BLOCK + tl.arange(0, BLOCK)
    q_mask = q < num_queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    row_stride = HEADS * HEAD_DIM
    value_base = b.to(tl.int64) * seq_len * row_stride + h * HEAD_DIM
    point_base = ((b.to(tl.int64) * num_queries + q) * HEADS + h) * (LEVELS * POINTS)
    go_ptrs = grad_out_ptr + ((b.to(tl.int64) * num_queries + q) * HEADS + h)[:, None] * HEAD_DIM + d[None, :]
    grad_out = tl.load(go_ptrs, mask=q_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    for level in tl.static_range(LEVELS):
        height = tl.load(levels_ptr + 3 * level)
        width = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        for p in tl.static_range(POINTS):
            idx = point_base + level * POINTS + p
            x = tl.load(loc_ptr + 2 * idx, mask=q_mask, other=0.0) * width - 0.5
            y = tl.load(loc_ptr + 2 * idx + 1, mask=q_mask, other=0.0) * height - 0.5
            w = tl.load(weight_ptr + idx, mask=q_mask, other=0.0)
            x0 = tl.floor(x)
            y0 = tl.floor(y)
            fx = x - x0
            fy = y - y0
            v00, in00, px00 = _corner(value_ptr, value_base, row_stride, start, x0, y0, width, height, q_mask, d, d_mask)
            v01, in01, px01 = _corner(value_ptr, value_base, row_stride, start, x0 + 1, y0, width, height, q_mask, d, d_mask)
            v10, in10, px10 = _corner(value_ptr, value_base, row_stride, start, x0, y0 + 1, width, height, q_mask, d, d_mask)
            v11, in11, px11 = _corner(value_ptr, value_base, row_stride, start, x0 + 1, y0 + 1, width, height, q_mask, d, d_mask)
            top = v00 + fx[:, None] * (v01 - v00)
            bottom = v10 + fx[:, None] * (v11 - v10)
            sample = top + fy[:, None] * (bottom - top)
            tl.store(grad_weight_ptr + idx, tl.sum(grad_out * sample, 1), mask=q_mask)
            # d sample / d x (pixels) and / d y; x = loc_x * W - 0.5, so d x / d loc_x = W.
            d_fx = (1 - fy)[:, None] * (v01 - v00) + fy[:, None] * (v11 - v10)
            d_fy = bottom - top
            tl.store(grad_loc_ptr + 2 * idx, w * width * tl.sum(grad_out * d_fx, 1), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * idx + 1, w * height * tl.sum(grad_out * d_fy, 1), mask=q_mask)
            g = w[:, None] * grad_out
            _scatter(grad_value_ptr, value_base, row_stride, px00, in00, d, d_mask, ((1 - fx) * (1 - fy))[:, None] * g)
            _scatter(grad_value_ptr, value_base, row_stride, px01, in01, d, d_mask, (fx * (1 - fy))[:, None] * g)
            _scatter(grad_value_ptr, value_base, row_stride, px10, in10, d, d_mask, ((1 - fx) * fy)[:, None] * g)
            _scatter(grad_value_ptr, value_base, row_stride, px11, in11, d, d_mask, (fx * fy)[:, None] * g)


@functools.lru_cache(maxsize=64)
def level_table(spatial_shapes: tuple[tuple[int, int], ...], device: torch.device) -> torch.Tensor:
    """(L, 3) int32 rows (H_l, W_l, start_l) on `device`; cached, so a fixed input size copies it once."""
    rows, start = [], 0
    for height, width in spatial_shapes:
        rows.append((height, width, start))
        start += height * width
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _launch_grid(batch: int, heads: int, num_queries: int) -> tuple[int, int]:
    return triton.cdiv(num_queries, BLOCK_Q), batch * heads


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, levels, sampling_locations, attention_weights):
        batch, seq_len, heads, head_dim = value.shape
        _, num_queries, _, num_levels, points, _ = sampling_locations.shape
        out = torch.empty(batch, num_queries, heads * head_dim, dtype=value.dtype, device=value.device)
        _forward_kernel[_launch_grid(batch, heads, num_queries)](
            value, levels, sampling_locations, attention_weights, out, num_queries, seq_len,
            HEADS=heads, HEAD_DIM=head_dim, LEVELS=num_levels, POINTS=points,
            BLOCK=BLOCK_Q, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(value, levels, sampling_locations, attention_weights)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        value, levels, sampling_locations, attention_weights = ctx.saved_tensors
        batch, seq_len, heads, head_dim = value.shape
        _, num_queries, _, num_levels, points, _ = sampling_locations.shape
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)  # atomics accumulate in fp32
        grad_loc = torch.empty_like(sampling_locations)
        grad_weight = torch.empty_like(attention_weights)
        _backward_kernel[_launch_grid(batch, heads, num_queries)](
            value, levels, sampling_locations, attention_weights, grad_out.contiguous(),
            grad_value, grad_loc, grad_weight, num_queries, seq_len,
            HEADS=heads, HEAD_DIM=head_dim, LEVELS=num_levels, POINTS=points,
            BLOCK=BLOCK_Q, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=NUM_WARPS,
        )
        return grad_value.to(value.dtype), None, grad_loc, grad_weight


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The fused kernel; same arguments and result as `ms_deform_attn_reference`.

    value: (B, S, heads, D) float32 or bfloat16 on CUDA; sampling_locations (B, Lq, heads, L, P, 2)
    and attention_weights (B, Lq, heads, L, P) float32. Returns (B, Lq, heads * D) in value's dtype.
    """
    levels = level_table(tuple((int(h), int(w)) for h, w in spatial_shapes), value.device)
    return _MSDeformAttnFunction.apply(
        value.contiguous(), levels, sampling_locations.contiguous(), attention_weights.contiguous()
    )
