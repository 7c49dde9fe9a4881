"""What packed trials rely on (GPU only): under `automl.packing.keep_to_share`'s cap, the convolution whose
float32 FFT plan took a 33 GiB workspace (the pixel decoder's FPN 3x3 convolution at 512x512, batch 8) still
runs, within the cap, and gives the uncapped result: PyTorch's cuDNN path falls back to a plan that fits."""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from automl.packing import keep_to_share  # noqa: E402


def fpn_convolution_step(conv: torch.nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and input gradient, as in a training step (the workspace is taken by both)."""
    x = x.detach().requires_grad_(True)
    out = conv(x)
    out.sum().backward()
    return out.detach(), x.grad


def test_the_fpn_convolution_runs_within_a_quarter_of_the_gpu_and_matches_uncapped():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, kernel_size=3, padding=1).cuda()
    x = torch.randn(8, 256, 128, 128, device="cuda")  # batch 8, 1/4 of 512x512
    expected = fpn_convolution_step(conv, x)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        keep_to_share(0.25)
        got = fpn_convolution_step(conv, x)
        assert torch.cuda.max_memory_reserved() <= 0.25 * total
    finally:
        keep_to_share(1.0)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3)  # another algorithm: float32 sums in another order
