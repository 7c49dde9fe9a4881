"""The assembled network: output contract, masked attention, precision, and the factory's arguments."""

import pytest
import torch

from model import PRESETS, build_mask2former
from model.backbone import build_backbone
from model.errors import ArgumentError, UserError
from model.pixel_decoder import MSDeformAttnPixelDecoder
from model.transformer_decoder import Attention, attention_mask_from_masks

TINY_SWIN = dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.1)


def tiny(backbone="swin", **overrides):
    """A tiny Mask2Former: 5 classes, 7 queries, 4 predictions."""
    kwargs = dict(
        num_classes=5, num_queries=7, hidden_dim=32, nheads=4, dim_feedforward=64, dec_layers=4, conv_dim=32, mask_dim=16,
        num_encoder_layers=2, backbone_kwargs=TINY_SWIN if backbone == "swin" else None,
    )
    return build_mask2former(backbone, **{**kwargs, **overrides})


@pytest.mark.parametrize("backbone", ["swin", "resnet50"])
def test_forward_gives_class_and_mask_logits_per_query_plus_earlier_predictions(backbone):
    model = tiny(backbone).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))

    assert out["pred_logits"].shape == (2, 7, 6)  # 5 classes + no-object
    assert out["pred_masks"].shape == (2, 7, 16, 24)  # 1/4 of the input
    assert len(out["aux_outputs"]) == 3  # dec_layers 4: the initial queries' prediction + 2 layers before the last
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 7, 6) and aux["pred_masks"].shape == (2, 7, 16, 24)


def test_dec_layers_counts_the_prediction_of_the_initial_queries():
    model = tiny(dec_layers=1)
    assert len(model.transformer_decoder.layers) == 0
    assert model(torch.randn(1, 3, 64, 64))["aux_outputs"] == []
    assert len(tiny(dec_layers=10).transformer_decoder.layers) == 9


def test_pre_norm_decoder_and_gradients_reach_every_part():
    model = tiny(pre_norm=True).train()
    out = model(torch.randn(1, 3, 64, 64))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum() + sum(a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    for part in (model.backbone, model.pixel_decoder, model.transformer_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_mask_embedding_dot_mask_features_gives_the_masks():
    model = tiny(dec_layers=1).eval()
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


def tiny_pixel_decoders() -> tuple[list[torch.Tensor], MSDeformAttnPixelDecoder, MSDeformAttnPixelDecoder, list[torch.Tensor]]:
    """Float32 backbone maps (B=2, 64x64 images), two pixel decoders with the same weights (fpn_autocast False,
    True) and the original's float32 outputs without autocast: [mask_features, *multi_scale_features]."""
    torch.manual_seed(0)
    backbone = build_backbone("swin", embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4)
    kwargs = dict(conv_dim=32, mask_dim=16, num_encoder_layers=1, nheads=4)
    original = MSDeformAttnPixelDecoder(backbone.channels, backbone.strides, **kwargs)
    fpn_autocast = MSDeformAttnPixelDecoder(backbone.channels, backbone.strides, fpn_autocast=True, **kwargs)
    fpn_autocast.load_state_dict(original.state_dict())  # strict: the choice adds no parameter
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
        mask_features, multi_scale = original(features)
    return features, original, fpn_autocast, [mask_features, *multi_scale]


def test_fpn_autocast_runs_the_fpn_in_bfloat16_and_keeps_the_encoder_float32():
    features, _, fpn_autocast, (reference, *reference_multi_scale) = tiny_pixel_decoders()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = fpn_autocast(features)
    assert mask_features.dtype == torch.bfloat16
    assert [m.dtype for m in multi_scale] == [torch.float32] * 3
    for got, expected in zip(multi_scale, reference_multi_scale):
        assert torch.equal(got, expected)  # the encoder is untouched
    # bf16 rounding of the FPN: max error ~0.02 on values up to ~3; a miswired FPN is off by O(1)
    torch.testing.assert_close(mask_features.float(), reference, atol=0.05, rtol=0.02)


def test_fpn_autocast_off_ignores_autocast_and_on_without_autocast_is_the_original():
    features, original, fpn_autocast, reference = tiny_pixel_decoders()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast, under_autocast_multi_scale = original(features)
        no_autocast, no_autocast_multi_scale = fpn_autocast(features)  # as export and deployment run it
    for outputs in ((under_autocast, *under_autocast_multi_scale), (no_autocast, *no_autocast_multi_scale)):
        assert [o.dtype for o in outputs] == [torch.float32] * 4
        for got, expected in zip(outputs, reference):
            assert torch.equal(got, expected)


def test_common_stride_8_gives_masks_at_one_eighth():
    out = tiny(common_stride=8)(torch.randn(1, 3, 64, 64))
    assert out["pred_masks"].shape[-2:] == (8, 8)


def test_named_swin_size_uses_the_published_widths():
    assert tiny("swin_tiny", backbone_kwargs=None).backbone.channels == [96, 192, 384, 768]


def test_presets_build_the_published_configurations():
    assert set(PRESETS) >= {"swin_tiny_coco_panoptic", "swin_tiny_coco_instance", "swin_tiny_ade_semantic", "resnet50_coco_panoptic"}
    large = build_mask2former(**PRESETS["swin_large_coco_panoptic"])
    assert large.backbone.channels == [192, 384, 768, 1536]
    assert large.transformer_decoder.query_feat.num_embeddings == 200
    assert large.transformer_decoder.class_embed.out_features == 134  # 133 COCO panoptic classes + no-object


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(backbone="efficientvit", backbone_kwargs=None), "backbone"),
        (dict(backbone="swin_huge", backbone_kwargs=None), "backbone"),
        (dict(conv_dim=48), "conv_dim"),
        (dict(nheads=3), "conv_dim"),
        (dict(dec_layers=0), "dec_layers"),
        (dict(encoder_in_features=["res2", "res5"]), "encoder_in_features"),
        (dict(encoder_in_features=["res6"]), "encoder_in_features"),
        (dict(backbone_kwargs={**TINY_SWIN, "num_heads": [1, 2, 2]}), "num_heads"),
    ],
)
def test_values_the_network_cannot_be_built_with_are_errors_naming_the_argument(overrides, argument):
    with pytest.raises(ArgumentError, match=f"^{argument}: ") as caught:
        tiny(**overrides)
    assert caught.value.argument == argument


def test_a_missing_backbone_weights_file_is_a_user_error_naming_it():
    with pytest.raises(UserError, match="/no/such/swin.pth: checkpoint not found"):
        tiny(backbone_weights="/no/such/swin.pth")
