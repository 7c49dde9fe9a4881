"""GraphedTraining on the CPU: no capture, the network's own forward and gradients."""

import torch

from model.cuda_graph import GraphedTraining


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
