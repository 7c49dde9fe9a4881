"""The CUDA-graph training forward and backward against the eager network (GPU only).

Stochastic depth is off so that the two paths compute the same function; the replayed graph
must give the eager outputs and parameter gradients, also for a second batch with new values
(copied into the captured input), and fall back to eager for any other input shape.
"""

from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from automl.spec import load_spec  # noqa: E402
from automl.spec.model_args import build_network  # noqa: E402
from model.cuda_graph import GraphedInference, GraphedTraining  # noqa: E402

SMOKE_SPEC = Path(__file__).resolve().parents[2] / "experiments" / "synthetic_smoke.yaml"


def smoke_network() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = load_spec(SMOKE_SPEC, ["model.backbone.swin.drop_path_rate=0.0"])
    return build_network(spec.model).cuda().train()


def forward_backward(call, network: torch.nn.Module, images: torch.Tensor, bf16: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs (cloned: a replay overwrites them) and parameter gradients, under bf16 autocast
    (or in float32), of a loss using every output."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        outputs = call(images)
        leaves = [outputs["pred_logits"], outputs["pred_masks"]] + [t for aux in outputs["aux_outputs"] for t in aux.values()]
        loss = sum((leaf.float().sin() * (i + 1)).mean() for i, leaf in enumerate(leaves))
    loss.backward()
    grads = [p.grad.clone() for p in network.parameters() if p.grad is not None]
    network.zero_grad(set_to_none=True)
    return [leaf.detach().float().clone() for leaf in leaves], grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def test_replayed_training_step_gives_the_eager_outputs_and_gradients():
    network = smoke_network()
    graphed = GraphedTraining(network)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second batch is copied into the captured input
        images = torch.randn(2, 3, 128, 128, generator=generator).cuda()
        _, exact_grads = forward_backward(network, network, images, bf16=False)
        eager_out, eager_grads = forward_backward(network, network, images)
        graph_out, graph_grads = forward_backward(graphed, network, images)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert graphed.replays(images)
        assert len(graph_grads) == len(eager_grads) == len(exact_grads) > 0
        for g, e in zip(graph_out, eager_out):
            assert relative_error(g, e) < 1e-3
        # bf16 backward sums round differently under capture (other GEMM algorithms): each graphed
        # gradient must be as close to the float32 one as the eager bf16 gradient is
        for g, e, exact in zip(graph_grads, eager_grads, exact_grads):
            assert relative_error(g, exact) <= 1.5 * relative_error(e, exact) + 1e-3


def test_another_input_shape_or_eval_mode_runs_eagerly():
    network = smoke_network()
    graphed = GraphedTraining(network)
    forward_backward(graphed, network, torch.randn(2, 3, 128, 128, device="cuda"))
    smaller = torch.randn(1, 3, 96, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert not graphed.replays(smaller)
    graph_out, _ = forward_backward(graphed, network, smaller)
    eager_out, _ = forward_backward(network, network, smaller)
    for g, e in zip(graph_out, eager_out):
        assert relative_error(g, e) < 1e-3
    network.eval()
    assert not graphed.replays(torch.randn(2, 3, 128, 128, device="cuda"))


def test_replayed_inference_gives_the_eager_outputs_and_keeps_earlier_ones():
    network = smoke_network().eval()
    graphed = GraphedInference(network)
    first, second = torch.randn(2, 1, 3, 128, 160, device="cuda").unbind(0)
    with torch.inference_mode():
        eager_first, eager_second = network(first), network(second)
        graphed(first)  # eager: the warm-up of this shape
        replayed_first = graphed(first)
        replayed_second = graphed(second)  # must not overwrite replayed_first
        assert len(graphed._graphs) == 1
        graphed(torch.randn(1, 3, 96, 160, device="cuda"))  # another shape: eager, no graph yet
        assert len(graphed._graphs) == 1
    for replayed, eager in ((replayed_first, eager_first), (replayed_second, eager_second)):
        for key in ("pred_logits", "pred_masks"):
            assert relative_error(replayed[key], eager[key]) < 1e-5
