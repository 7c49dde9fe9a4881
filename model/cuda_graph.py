"""CUDA-graph replay of a network's training step (forward and backward) and of its inference.

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

`GraphedInference` does the same for eval-mode forwards under `torch.inference_mode`, with one
graph per input shape that recurs (images of one size, the common case), eager otherwise.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
from torch import nn

# Only the capturing thread is checked: a data loader's pin-memory thread may use CUDA meanwhile.
CAPTURE_ERROR_MODE = "thread_local"
# make_graphed_callables takes the mode in the pinned torch; older releases check every thread.
_GRAPHED_CALLABLES_MODE = (
    {"capture_error_mode": CAPTURE_ERROR_MODE}
    if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters
    else {}
)


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


def _input_key(images: torch.Tensor) -> tuple:
    """What a captured graph is valid for: the input's shape, dtype and device, and autocast."""
    return tuple(images.shape), images.dtype, images.device, _autocast_state()


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
        return self._key is None or self._key == _input_key(images)

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
                allow_unused_input=True, **_GRAPHED_CALLABLES_MODE,
            )
        self._key = _input_key(images)


class GraphedInference:
    """Calls `network(images)` of an eval-mode network, replaying one CUDA graph per input shape.

    Args:
        network: the module, in eval mode; its parameters must stay where they are (a graph reads
            them by address), so load weights and move it before the first call.
        capture_after: calls with one input key (shape, dtype, autocast state) run eagerly this
            many times before the key gets a graph; the first doubles as the warm-up capture needs,
            and a shape seen once (a folder of images of many sizes) never pays for a capture.
        max_graphs: graphs kept, the least recently used dropped first (each holds its
            activations' memory).

    Outputs are copies, so a later call does not overwrite what an earlier one returned. Runs
    eagerly on the CPU, in training mode and with gradients enabled.
    """

    def __init__(self, network: nn.Module, capture_after: int = 1, max_graphs: int = 4):
        if capture_after < 1:
            raise ValueError(f"capture_after must be >= 1 (capture needs an eager warm-up), got {capture_after}")
        self.network = network
        self.capture_after, self.max_graphs = capture_after, max_graphs
        self._seen: dict[Hashable, int] = {}
        self._graphs: OrderedDict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = OrderedDict()

    def __call__(self, images: torch.Tensor) -> Any:
        if not images.is_cuda or self.network.training or torch.is_grad_enabled():
            return self.network(images)
        key = _input_key(images)
        entry = self._graphs.get(key)
        if entry is None:
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] <= self.capture_after:
                return self.network(images)
            entry = self._capture(key, images)
        self._graphs.move_to_end(key)
        graph, static_images, static_outputs = entry
        static_images.copy_(images)
        graph.replay()
        return torch.utils._pytree.tree_map(torch.clone, static_outputs)

    def _capture(self, key: Hashable, images: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        if len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        static_images = images.clone()
        enabled, dtype = _autocast_state()
        graph = torch.cuda.CUDAGraph()
        with (
            torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False),
            torch.cuda.graph(graph, capture_error_mode=CAPTURE_ERROR_MODE),
        ):
            static_outputs = self.network(static_images)
        self._graphs[key] = graph, static_images, static_outputs
        return self._graphs[key]
