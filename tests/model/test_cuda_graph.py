"""GraphedTraining and GraphedInference on the CPU: no capture, the network's own outputs and gradients."""

import torch

from model.cuda_graph import GraphedInference, GraphedTraining


def test_on_the_cpu_it_is_the_eager_network():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).train()
    graphed = GraphedTraining(network)
    images = torch.randn(2, 3, 8, 8)
    assert not graphed.replays(images)
    graphed(images).square().sum().backward()
    grads = [p.grad.clone() for p in network.parameters()]
    network.zero_grad(set_to_none=True)
    network(images).square().sum().backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, network.parameters()))


def test_inference_on_the_cpu_is_the_eager_network_and_captures_nothing():
    network = torch.nn.Conv2d(3, 4, 3).eval()
    graphed = GraphedInference(network)
    images = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        for _ in range(3):
            assert torch.equal(graphed(images), network(images))
    assert not graphed._graphs
