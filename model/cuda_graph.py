"""CUDA-graph replay of a network's training forward and backward for one input shape.

An eager Mask2Former training step launches thousands of small kernels, and the host's time
to launch them, not the GPU's arithmetic, sets the step time. `GraphedTraining` captures the
network's forward and its backward once (`torch.cuda.make_graphed_callables`) for the first
input shape it sees, and from then on replays the two graphs: one launch each. The loss and the
matcher stay eager around it. The arithmetic is the same kernels on the same data; only the
random stream of stochastic depth differs from an eager run.

It runs eagerly (never a wrong replay) where a graph would not be exact: on the CPU, in eval
mode or without gradients, for any other input shape, dtype or autocast state than the one
captured (e.g. a smaller last batch), under activation checkpointing (its backward re-seeds the
random generator from the host), and in a distributed run (untested with DDP's gradient hooks).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class _Forward(nn.Module):
    """The network as the graphed callable; a separate module so that capture leaves the
    network's own forward untouched (`make_graphed_callables` replaces the forward it graphs)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> Any:
        return self.network(images)


def _autocast_state() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")


class GraphedTraining:
    """Calls `network(images)`, through captured CUDA graphs where that is exact.

    Args:
        network: the module; its parameters are read and its gradients written in place, so an
            optimiser stepping them in place (all of torch.optim) needs nothing else.
        warmup_iters: eager forward + backward passes on a side stream before capture (cuDNN
            plans, Triton compilation and caches must not happen inside the capture).

    Use: `outputs = graphed(images)` in the training step, gradients by `loss.backward()` as
    usual; set the gradients to None between steps (`zero_grad(set_to_none=True)`, the default
    of torch.optim and Lightning) because the replayed backward writes them in the same buffers.
    """

    def __init__(self, network: nn.Module, warmup_iters: int = 3):
        self.network = network
        self.warmup_iters = warmup_iters
        # activation checkpointing's recompute restores the random state from the host: not capturable
        self._checkpoints = any(getattr(m, "use_checkpoint", False) for m in network.modules())
        self._key: tuple | None = None
        self._graphed: Callable[[torch.Tensor], Any] | None = None

    def replays(self, images: torch.Tensor) -> bool:
        """Whether a call with `images` now would use (or first capture) the graph."""
        if not (images.is_cuda and self.network.training and torch.is_grad_enabled()):
            return False
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return False
        if self._checkpoints:
            return False
        return self._key is None or self._key == self._input_key(images)

    @staticmethod
    def _input_key(images: torch.Tensor) -> tuple:
        return tuple(images.shape), images.dtype, images.device, _autocast_state()

    def __call__(self, images: torch.Tensor) -> Any:
        if not self.replays(images):
            return self.network(images)
        if self._graphed is None:
            self._capture(images)
        return self._graphed(images)

    def _capture(self, images: torch.Tensor) -> None:
        enabled, dtype = _autocast_state()
        # make_graphed_callables refuses autocast's weight-cast cache (the casts must be in the graph)
        with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
            self._graphed = torch.cuda.make_graphed_callables(
                _Forward(self.network), (images.detach().clone(),), num_warmup_iters=self.warmup_iters,
                allow_unused_input=True,
            )
        self._key = self._input_key(images)
