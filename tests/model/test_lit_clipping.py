"""Gradient clipping by norm: Lightning's own path on one device and DDP, the sharded module's under FSDP."""

from types import SimpleNamespace

import torch
from lightning.pytorch.strategies import FSDPStrategy

from model.lit import Mask2FormerModule

SETTINGS = dict(pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3, lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)


def _module_with_gradients(strategy) -> Mask2FormerModule:
    torch.manual_seed(0)
    module = Mask2FormerModule(torch.nn.Conv2d(3, 4, 3), None, None, None, **SETTINGS)
    module.model(torch.randn(2, 3, 8, 8)).mul(100).square().sum().backward()
    module._trainer = SimpleNamespace(strategy=strategy)
    return module


class _ShardedModule:
    """Stands in for the FSDP-wrapped module (FSDP itself needs a GPU): records what it was asked to clip."""

    def __init__(self):
        self.max_norms = []

    def clip_grad_norm_(self, max_norm):
        self.max_norms.append(max_norm)


def test_under_fsdp_the_sharded_module_clips_with_the_specs_max_norm():
    strategy = FSDPStrategy()
    strategy.model = _ShardedModule()
    module = _module_with_gradients(strategy)
    before = [p.grad.clone() for p in module.model.parameters()]
    module.configure_gradient_clipping(torch.optim.SGD(module.model.parameters(), lr=0.1), 0.5, "norm")
    assert strategy.model.max_norms == [0.5]
    assert all(torch.equal(b, p.grad) for b, p in zip(before, module.model.parameters()))  # nothing clipped twice


def test_without_fsdp_lightnings_own_clipping_runs_with_the_same_arguments():
    module = _module_with_gradients(SimpleNamespace())
    calls = []
    module.clip_gradients = lambda optimizer, value, algorithm: calls.append((value, algorithm))
    module.configure_gradient_clipping(torch.optim.SGD(module.model.parameters(), lr=0.1), 0.5, "norm")
    assert calls == [(0.5, "norm")]
