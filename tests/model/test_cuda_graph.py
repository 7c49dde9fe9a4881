"""GraphedTraining and GraphedInference on the CPU: no capture, the network's own outputs and gradients."""

import torch

from model.cuda_graph import GraphedInference, GraphedTraining
from model.lit import Mask2FormerModule


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


def test_the_lightning_module_with_graphs_registers_the_network_once_and_computes_the_same():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, 4, 3)
    settings = dict(pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3, lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    plain = Mask2FormerModule(network, None, None, None, **settings)
    graphed = Mask2FormerModule(network, None, None, None, cuda_graph=True, **settings)
    assert list(graphed.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable
    assert [n for n, _ in graphed.named_parameters()] == [n for n, _ in plain.named_parameters()]
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(graphed(images), plain(images))
