"""The Triton deformable-attention kernel against the grid_sample reference in float64 (GPU only).

Every check draws fresh random inputs with some points outside their map, and compares by the
relative error ||fused - reference|| / ||reference||; the reference runs in float64 on the
upcast inputs, so the bound measures the kernel alone.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from model import ms_deform_attn as msda  # noqa: E402
from model.ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference, uses_fused_kernel  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# Power-of-two maps keep x = loc * W - 0.5 exact in float32, so no point lands on the other side
# of a pixel edge than in float64 (the location gradient jumps there); the forward is continuous
# and is also checked on other sizes.
POW2_SHAPES = [(8, 16), (16, 32), (32, 64)]
ODD_SHAPES = [(25, 38), (13, 19), (7, 10)]


def random_inputs(shapes, dtype, batch=2, queries=333, heads=8, head_dim=32, points=4):
    """value (dtype), locations in [-0.1, 1.1] (some outside), softmax weights; float32 locations/weights."""
    seq = sum(h * w for h, w in shapes)
    value = torch.randn(batch, seq, heads, head_dim, device="cuda").to(dtype)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, device="cuda") * 1.2 - 0.1
    weights = torch.randn(batch, queries, heads, len(shapes) * points, device="cuda").softmax(-1)
    return value, locations, weights.view(batch, queries, heads, len(shapes), points)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(actual).all()
    return ((actual.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shapes", [POW2_SHAPES, ODD_SHAPES], ids=["pow2", "odd"])
def test_fused_forward_matches_the_float64_reference(dtype, shapes):
    value, locations, weights = random_inputs(shapes, dtype)
    assert uses_fused_kernel(value)
    out = ms_deform_attn(value, shapes, locations, weights)
    expected = ms_deform_attn_reference(value.double(), shapes, locations.double(), weights.double())
    assert out.dtype == dtype and out.shape == expected.shape
    assert rel_error(out, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 24])
def test_fused_gradients_match_the_float64_reference(dtype, head_dim):
    shapes = POW2_SHAPES
    value, locations, weights = random_inputs(shapes, dtype, head_dim=head_dim)
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * head_dim, device="cuda").to(dtype)
    inputs = [t.detach().requires_grad_() for t in (value, locations, weights)]
    ms_deform_attn(inputs[0], shapes, inputs[1], inputs[2]).backward(grad_out)
    upcast = [t.detach().double().requires_grad_() for t in (value, locations, weights)]
    ms_deform_attn_reference(upcast[0], shapes, upcast[1], upcast[2]).backward(grad_out.double())
    for name, fused, reference in zip(("value", "locations", "weights"), inputs, upcast):
        assert fused.grad.dtype == fused.dtype
        error = rel_error(fused.grad, reference.grad)
        assert error <= TOLERANCE[dtype], f"grad of {name}: relative error {error:.2e}"


def test_points_far_outside_read_zeros():
    shapes = [(4, 4)]
    value = torch.randn(1, 16, 1, 32, device="cuda")
    # far beyond int32 pixel indices, and just past the right edge (x = 1.2 * 4 - 0.5: both columns outside)
    locations = torch.tensor([-1e9, 1e9, 3e12, 0.5, 1.2, 0.5], device="cuda").view(1, 1, 1, 1, 3, 2)
    out = ms_deform_attn(value, shapes, locations, torch.ones(1, 1, 1, 1, 3, device="cuda"))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_unsupported_dtypes_on_cuda_take_the_reference_path(dtype, monkeypatch):
    value, locations, weights = random_inputs(POW2_SHAPES, dtype, queries=10)
    assert not uses_fused_kernel(value)

    def fused_must_not_run(*args):
        raise AssertionError(f"the Triton kernel ran on {dtype}")

    monkeypatch.setattr(msda, "fused_kernel", lambda: fused_must_not_run)
    out = ms_deform_attn(value, POW2_SHAPES, locations.to(dtype), weights.to(dtype))
    assert out.dtype == dtype


def test_module_under_bf16_autocast_trains_through_the_fused_kernel():
    attn = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=4).cuda()
    seq = sum(h * w for h, w in POW2_SHAPES)
    memory = torch.randn(2, seq, 64, device="cuda", requires_grad=True)
    reference_points = torch.rand(2, seq, 3, 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = attn(memory, reference_points, memory, POW2_SHAPES)
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(memory.grad).all() and memory.grad.abs().sum() > 0
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0  # the location gradient reaches the offsets


def test_torch_export_on_cuda_records_the_grid_sample_reference():
    """An AOTInductor package must not hold the Triton kernel: torch.export takes the reference path."""

    class Attention(torch.nn.Module):
        def forward(self, value, locations, weights):
            return ms_deform_attn(value, POW2_SHAPES, locations, weights)

    value, locations, weights = random_inputs(POW2_SHAPES, torch.float32)
    assert uses_fused_kernel(value)  # outside export the kernel runs
    program = torch.export.export(Attention(), (value, locations, weights), strict=True)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("grid_sampler" in t for t in targets), sorted(targets)
    assert not any("triton" in t for t in targets), sorted(targets)
    expected = ms_deform_attn_reference(value.double(), POW2_SHAPES, locations.double(), weights.double())
    assert rel_error(program.module()(value, locations, weights), expected) <= TOLERANCE[torch.float32]
