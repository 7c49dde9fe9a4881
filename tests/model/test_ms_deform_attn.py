"""The grid_sample deformable-attention reference against a per-point bilinear computation, and
the dispatch that keeps it the CPU path (the Triton kernel is tested in tests/gpu)."""

import math

import torch

import pytest

from model import ms_deform_attn as msda
from model.ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference, uses_fused_kernel


def bilinear_reference(value, shapes, locations, weights):
    """Loop over every batch, query, head, level and point; pixel (i, j) covers
    [j/W, (j+1)/W) x [i/H, (i+1)/H) so its centre is at ((j+0.5)/W, (i+0.5)/H); outside reads 0."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads, dim, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)

    def pixel(b, level, i, j, head):
        h, w = shapes[level]
        if 0 <= i < h and 0 <= j < w:
            return value[b, starts[level] + i * w + j, head].double()
        return torch.zeros(dim, dtype=torch.float64)

    for b in range(batch):
        for q in range(queries):
            for head in range(heads):
                for level in range(levels):
                    h, w = shapes[level]
                    for p in range(points):
                        x = locations[b, q, head, level, p, 0].item() * w - 0.5
                        y = locations[b, q, head, level, p, 1].item() * h - 0.5
                        j0, i0 = math.floor(x), math.floor(y)
                        fx, fy = x - j0, y - i0
                        sample = (
                            (1 - fy) * (1 - fx) * pixel(b, level, i0, j0, head)
                            + (1 - fy) * fx * pixel(b, level, i0, j0 + 1, head)
                            + fy * (1 - fx) * pixel(b, level, i0 + 1, j0, head)
                            + fy * fx * pixel(b, level, i0 + 1, j0 + 1, head)
                        )
                        out[b, q, head] += weights[b, q, head, level, p].item() * sample
    return out.reshape(batch, queries, heads * dim)


def test_grid_sample_kernel_equals_per_point_bilinear_sampling_including_points_outside():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2), (1, 3)]
    batch, heads, dim, queries, points = 2, 2, 3, 5, 2
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.4 - 0.2  # some fall outside [0, 1]
    weights = torch.rand(batch, queries, heads, len(shapes), points)

    out = ms_deform_attn(value, shapes, locations, weights)

    assert out.shape == (batch, queries, heads * dim)
    torch.testing.assert_close(out.double(), bilinear_reference(value, shapes, locations, weights), atol=1e-5, rtol=1e-5)


def test_a_point_on_a_pixel_centre_reads_that_pixel():
    value = torch.arange(6.0).view(1, 6, 1, 1)  # one level 2 x 3, one head, one channel
    centre_of_row1_col2 = torch.tensor([(2 + 0.5) / 3, (1 + 0.5) / 2]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(2, 3)], centre_of_row1_col2, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == 5.0


def test_module_starts_with_uniform_weights_and_points_spread_around_the_reference():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right (+x), head 1 down (+y), head 2 left, head 3 up; point k at distance k+1.
    torch.testing.assert_close(offsets[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(offsets[1, 1, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.all(attn.attention_weights.weight == 0) and torch.all(attn.attention_weights.bias == 0)

    memory = torch.randn(2, 20, 16, requires_grad=True)
    query = torch.randn(2, 20, 16)
    reference = torch.rand(2, 20, 2, 2)
    out = attn(query, reference, memory, [(4, 4), (2, 2)])
    assert out.shape == (2, 20, 16)
    out.sum().backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cpu_tensors_take_the_reference_path(dtype, monkeypatch):
    value = torch.randn(1, 6, 1, 2, dtype=dtype)
    assert not uses_fused_kernel(value)

    def fused_must_not_run(*args):
        raise AssertionError("the Triton kernel ran on CPU tensors")

    monkeypatch.setattr(msda, "fused_kernel", lambda: fused_must_not_run)
    locations = torch.rand(1, 3, 1, 1, 2, 2, dtype=dtype)
    weights = torch.rand(1, 3, 1, 1, 2, dtype=dtype)
    torch.testing.assert_close(
        ms_deform_attn(value, [(2, 3)], locations, weights), ms_deform_attn_reference(value, [(2, 3)], locations, weights)
    )


def test_bfloat16_values_with_float32_locations_sample_in_float32():
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    value = torch.randn(2, 30, 2, 4).bfloat16()
    locations = torch.rand(2, 5, 2, 2, 3, 2)
    weights = torch.rand(2, 5, 2, 2, 3)

    out = ms_deform_attn_reference(value, shapes, locations, weights)

    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ms_deform_attn_reference(value.float(), shapes, locations, weights).bfloat16())


def test_training_after_inference_on_the_same_sizes_in_one_process_backpropagates():
    # Evaluate or export (inference mode) then train in one process: nothing cached for these sizes may be an inference tensor.
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    shapes = [(5, 7), (3, 4)]  # sizes no other test uses, so that inference mode is the first to see them
    memory, query, reference = torch.randn(1, 47, 16), torch.randn(1, 47, 16), torch.rand(1, 47, 2, 2)
    with torch.inference_mode():
        attn(query, reference, memory, shapes)
    attn(query, reference, memory, shapes).sum().backward()  # the sampling offsets' gradient divides by the cached sizes
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
