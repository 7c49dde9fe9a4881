"""The one checkpoint reader: weights-only loading, safetensors, unwrapping, and loading into a network."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from model import build_mask2former
from model.backbone import build_backbone, load_pretrained_backbone
from model.checkpoint import load_weights, read_checkpoint, read_state_dict, save_weights
from model.errors import ArgumentError, UserError

TINY_SWIN = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4)


def tiny(num_classes):
    return build_mask2former(
        "swin", num_classes=num_classes, num_queries=4, hidden_dim=32, nheads=4, dim_feedforward=32, dec_layers=2, conv_dim=32,
        mask_dim=16, num_encoder_layers=1, backbone_kwargs=TINY_SWIN,
    )


class Pickled:
    """An arbitrary object: a weights-only load refuses to unpickle it."""


def test_a_pickled_object_is_refused_with_an_error_naming_the_file(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Pickled()}, path)
    with pytest.raises(UserError, match=f"^{path}: not a readable weights-only PyTorch checkpoint") as caught:
        read_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_safetensors_and_wrapped_torch_files_give_the_same_weights(tmp_path):
    weights = {"a.weight": torch.randn(2, 3), "b.bias": torch.randn(2)}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, tmp_path / "w.pth")
    from_safetensors = read_state_dict(tmp_path / "w.safetensors")
    from_torch = read_state_dict(tmp_path / "w.pth", prefixes=("module.",))
    assert from_safetensors.keys() == from_torch.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(from_safetensors[key], value) and torch.equal(from_torch[key], value)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(UserError, match="empty.pth: holds no weights"):
        read_state_dict(tmp_path / "empty.pth")


def test_a_class_head_of_another_size_is_an_error_unless_fine_tuning(tmp_path, caplog):
    path = tmp_path / "nine.pth"
    trained = tiny(9)
    save_weights(path, trained.state_dict(), spec={})
    network = tiny(5)
    with pytest.raises(ArgumentError, match=r"^num_classes: 5, but .*nine.pth was trained with 9 classes") as caught:
        load_weights(network, path)
    assert caught.value.argument == "num_classes"

    with caplog.at_level(logging.WARNING, logger="model.checkpoint"):
        report = load_weights(network, path, skip_mismatched=True)
    assert report["mismatched"] == ["transformer_decoder.class_embed.bias", "transformer_decoder.class_embed.weight"]
    assert any(r.levelno == logging.WARNING and "class_embed" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(network.backbone.patch_embed.proj.weight, trained.backbone.patch_embed.proj.weight)


def test_evaluating_with_missing_weights_is_an_error(tmp_path):
    path = tmp_path / "partial.pth"
    state = {k: v for k, v in tiny(5).state_dict().items() if not k.startswith("pixel_decoder.")}
    save_weights(path, state, spec={})
    with pytest.raises(UserError, match=r"partial.pth: does not fit this model \(0 weights of another shape, \d+ missing\); e.g. pixel_decoder"):
        load_weights(tiny(5), path)


def test_the_backbone_of_a_mask2former_checkpoint_loads_as_backbone_weights(tmp_path):
    path = tmp_path / "trained.pth"
    trained = tiny(5)
    save_weights(path, trained.state_dict(), spec={})
    backbone = build_backbone("swin", **TINY_SWIN)
    report = load_pretrained_backbone(backbone, str(path))
    assert report.missing_keys == [] and report.unexpected_keys == []
    for key, value in trained.backbone.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[key], value)
