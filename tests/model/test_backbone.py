"""Backbones: the four-map output contract, any input size, and loading local ImageNet weights."""

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model.backbone import build_backbone, load_pretrained_backbone
from model.errors import UserError

TINY_SWIN = dict(embed_dim=24, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0)


def tiny_swin():
    return build_backbone("swin", **TINY_SWIN).eval()


def test_swin_returns_four_nchw_maps_at_strides_4_to_32():
    backbone = tiny_swin()
    assert backbone.channels == [24, 48, 96, 192]
    assert backbone.strides == [4, 8, 16, 32]
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 24, 16, 16), (2, 48, 8, 8), (2, 96, 4, 4), (2, 192, 2, 2)]


@pytest.mark.parametrize("size", [(96, 160), (100, 76)])
def test_swin_runs_at_test_sizes_other_than_the_training_crop(size):
    with torch.no_grad():
        maps = tiny_swin()(torch.randn(1, 3, *size))
    height, width = size
    for i, m in enumerate(maps):
        stride = 4 * 2**i
        assert m.shape[-2:] == (-(-height // stride), -(-width // stride))
        assert torch.isfinite(m).all()


def test_activation_checkpointing_changes_memory_not_results():
    torch.manual_seed(0)
    plain = build_backbone("swin", **TINY_SWIN).train()
    checkpointed = build_backbone("swin", **TINY_SWIN, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for model in (plain, checkpointed):
        sum(m.sum() for m in model(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_named_swin_sizes_fix_the_published_widths():
    assert build_backbone("swin_tiny").channels == [96, 192, 384, 768]
    with pytest.raises(ValueError):
        build_backbone("swin_tiny", embed_dim=64)


def test_resnet50_returns_layer1_to_layer4_with_frozen_batchnorm():
    backbone = build_backbone("resnet50").eval()
    assert backbone.channels == [256, 512, 1024, 2048]
    assert backbone.strides == [4, 8, 16, 32]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(UserError, match="efficientvit"):
        build_backbone("efficientvit")


def test_official_swin_release_checkpoint_loads_and_reports_what_it_lacks(tmp_path):
    source = tiny_swin()
    official = {k: v for k, v in source.state_dict().items() if not k.startswith("out_norms.")}
    official.update({"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192), "head.weight": torch.zeros(10, 192), "head.bias": torch.zeros(10)})
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    path = tmp_path / "swin_official.pth"
    torch.save({"model": official}, path)

    target = tiny_swin()
    report = load_pretrained_backbone(target, str(path))

    assert report.missing_keys == [f"out_norms.{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert report.unexpected_keys == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    for key, value in official.items():
        if key in target.state_dict():
            torch.testing.assert_close(target.state_dict()[key], value)


def test_timm_swin_weights_load_and_give_timm_features(tmp_path):
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=128, strict_img_size=False, always_partition=True,
        embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4, num_classes=10,
    ).eval()
    path = tmp_path / "timm_swin.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))

    backbone = tiny_swin()
    report = load_pretrained_backbone(backbone, str(path))

    assert [k for k in report.missing_keys if not k.startswith("out_norms.")] == []
    assert report.unexpected_keys == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    x = torch.randn(1, 3, 128, 128)  # every stage a whole number of windows: timm and the original agree
    with torch.no_grad():
        ours = backbone(x)
        theirs = reference.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(ours, theirs):  # our output LayerNorms are freshly initialised (weight 1, bias 0)
        torch.testing.assert_close(a, F.layer_norm(b.permute(0, 2, 3, 1), b.shape[1:2]).permute(0, 3, 1, 2), atol=1e-5, rtol=1e-4)


def test_torchvision_layout_resnet50_weights_load(tmp_path):
    source = timm.create_model("resnet50", pretrained=False)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)

    backbone = build_backbone("resnet50")
    report = load_pretrained_backbone(backbone, str(path))

    assert report.missing_keys == []
    assert report.unexpected_keys == ["body.fc.bias", "body.fc.weight"]
    torch.testing.assert_close(backbone.body.layer4[2].bn3.running_var, source.layer4[2].bn3.running_var)


def test_bad_weight_files_are_user_errors_naming_the_file(tmp_path):
    backbone = tiny_swin()
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(UserError, match="nowhere.pth.*not found"):
        load_pretrained_backbone(backbone, str(missing))

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pth"):
        load_pretrained_backbone(backbone, str(corrupt))

    other_model = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other_model)
    with pytest.raises(UserError, match="resnet.pth.*none of the weights"):
        load_pretrained_backbone(backbone, str(other_model))

    other_window = tmp_path / "window7.pth"
    torch.save({"model": build_backbone("swin", **{**TINY_SWIN, "window_size": 7}).state_dict()}, other_window)
    with pytest.raises(UserError, match="window7.pth.*relative_position_bias_table.*window_size"):
        load_pretrained_backbone(backbone, str(other_window))
