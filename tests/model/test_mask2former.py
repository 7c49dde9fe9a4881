"""The assembled network: output contract, masked attention, precision, and the spec's model section."""

from types import SimpleNamespace as NS

import pytest
import torch

from model.backbone import build_backbone
from model.errors import UserError
from model.mask2former import build_model
from model.pixel_decoder import MSDeformAttnPixelDecoder
from model.transformer_decoder import Attention, attention_mask_from_masks


def model_cfg(backbone="swin", mode="panoptic", **mask_former):
    """A tiny `model` section with the reference spec's keys."""
    swin = NS(
        type="custom", embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], patch_size=4, window_size=4, mlp_ratio=4.0,
        qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True,
        out_indices=[0, 1, 2, 3], pretrain_img_size=224, use_checkpoint=False, out_features=["res2", "res3", "res4", "res5"],
    )
    head = NS(
        common_stride=4, transformer_enc_layers=2, convs_dim=32, mask_dim=16,
        deformable_transformer_encoder_in_features=["res3", "res4", "res5"], num_classes=5, norm="GN",
    )
    decoder = NS(dropout=0.0, nheads=4, num_object_queries=7, hidden_dim=32, dim_feedforward=64, dec_layers=4, pre_norm=False)
    for key, value in mask_former.items():
        setattr(decoder, key, value)
    return NS(backbone=NS(type=backbone, pretrained_weights="", swin=swin), sem_seg_head=head, mask_former=decoder, mode=mode)


@pytest.mark.parametrize("backbone", ["swin", "resnet50"])
@pytest.mark.parametrize("mode", ["panoptic", "instance", "semantic"])
def test_forward_gives_class_and_mask_logits_per_query_plus_earlier_predictions(backbone, mode):
    model = build_model(model_cfg(backbone, mode)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))

    assert out["pred_logits"].shape == (2, 7, 6)  # 5 classes + no-object
    assert out["pred_masks"].shape == (2, 7, 16, 24)  # 1/4 of the input
    assert len(out["aux_outputs"]) == 3  # dec_layers 4: the initial queries' prediction + 2 layers before the last
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 7, 6) and aux["pred_masks"].shape == (2, 7, 16, 24)


def test_dec_layers_counts_the_prediction_of_the_initial_queries():
    model = build_model(model_cfg(dec_layers=1))
    assert len(model.transformer_decoder.layers) == 0
    assert model(torch.randn(1, 3, 64, 64))["aux_outputs"] == []
    assert len(build_model(model_cfg(dec_layers=10)).transformer_decoder.layers) == 9


def test_pre_norm_decoder_and_gradients_reach_every_part():
    model = build_model(model_cfg(pre_norm=True)).train()
    out = model(torch.randn(1, 3, 64, 64))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum() + sum(a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    for part in (model.backbone, model.pixel_decoder, model.transformer_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_mask_embedding_dot_mask_features_gives_the_masks():
    model = build_model(model_cfg(dec_layers=1)).eval()
    decoder = model.transformer_decoder
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 64))
        mask_features, multi_scale = model.pixel_decoder(features)
        out = decoder(multi_scale, mask_features)
        embed = decoder.mask_embed(decoder.decoder_norm(decoder.query_feat.weight))
    torch.testing.assert_close(out["pred_masks"][0], torch.einsum("qc,chw->qhw", embed, mask_features[0]))


def test_attention_mask_keeps_each_query_inside_its_resized_mask():
    logits = torch.full((1, 3, 8, 8), -5.0)
    logits[0, 0, :4, :4] = 5.0  # query 0: top-left quarter
    logits[0, 1] = 5.0  # query 1: everything; query 2: nothing

    allowed = attention_mask_from_masks(logits, (4, 4))

    assert allowed.shape == (1, 1, 3, 16) and allowed.dtype == torch.bool
    expected_q0 = torch.zeros(4, 4, dtype=torch.bool)
    expected_q0[:2, :2] = True
    assert torch.equal(allowed[0, 0, 0].view(4, 4), expected_q0)
    assert allowed[0, 0, 1].all()


def test_a_query_whose_mask_blocks_everything_is_unblocked():
    logits = torch.full((2, 4, 8, 8), -5.0)
    logits[0, 0, :4, :4] = 5.0  # image 0, query 0: top-left quarter; every other query: nothing
    allowed = attention_mask_from_masks(logits, (2, 2))
    assert allowed[0, 0, 1:].all() and allowed[1, 0].all()
    assert allowed[0, 0, 0].tolist() == [True, False, False, False]


def test_masked_attention_is_attention_over_the_allowed_keys_only():
    torch.manual_seed(0)
    attn = Attention(embed_dim=8, num_heads=2)
    query, keys = torch.randn(1, 2, 8), torch.randn(1, 5, 8)
    allowed = torch.tensor([[True, False, True, False, False], [False, True, True, True, True]]).view(1, 1, 2, 5)
    out = attn(query, keys, keys, allowed)
    torch.testing.assert_close(out[:, :1], attn(query[:, :1], keys[:, [0, 2]], keys[:, [0, 2]]))
    torch.testing.assert_close(out[:, 1:], attn(query[:, 1:], keys[:, 1:], keys[:, 1:]))


def test_pixel_decoder_stays_float32_under_bfloat16_autocast():
    backbone = build_backbone("swin", embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4)
    decoder = MSDeformAttnPixelDecoder(backbone.channels, backbone.strides, conv_dim=32, mask_dim=16, num_encoder_layers=1, nheads=4)
    features = [f.to(torch.bfloat16) for f in backbone(torch.randn(1, 3, 64, 64))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = decoder(features)
    assert mask_features.dtype == torch.float32
    assert [m.dtype for m in multi_scale] == [torch.float32] * 3
    assert [tuple(m.shape[-2:]) for m in multi_scale] == [(2, 2), (4, 4), (8, 8)]


def test_common_stride_8_gives_masks_at_one_eighth():
    cfg = model_cfg()
    cfg.sem_seg_head.common_stride = 8
    out = build_model(cfg)(torch.randn(1, 3, 64, 64))
    assert out["pred_masks"].shape[-2:] == (8, 8)


def test_named_swin_type_uses_the_preset_not_the_custom_fields():
    cfg = model_cfg()
    cfg.backbone.swin.type = "tiny"
    assert build_model(cfg).backbone.channels == [96, 192, 384, 768]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: setattr(c.backbone, "type", "efficientvit"), "model.backbone.type"),
        (lambda c: setattr(c.backbone.swin, "type", "huge"), "model.backbone.swin.type"),
        (lambda c: setattr(c.backbone.swin, "out_indices", [1, 2, 3]), "out_indices"),
        (lambda c: setattr(c.sem_seg_head, "convs_dim", 48), "convs_dim"),
        (lambda c: setattr(c.mask_former, "nheads", 3), "nheads"),
        (lambda c: setattr(c.sem_seg_head, "deformable_transformer_encoder_in_features", ["res2", "res5"]), "deformable_transformer_encoder_in_features"),
        (lambda c: setattr(c.backbone, "pretrained_weights", "/no/such/swin.pth"), "/no/such/swin.pth"),
    ],
)
def test_values_the_network_cannot_be_built_with_are_user_errors_naming_the_key(change, message):
    cfg = model_cfg()
    change(cfg)
    with pytest.raises(UserError, match=message):
        build_model(cfg)
