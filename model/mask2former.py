"""Mask2Former (Cheng et al., CVPR 2022): backbone -> pixel decoder -> masked-attention decoder.

`Mask2Former` maps normalised images to per-query class logits and mask logits; the same
network serves panoptic, instance and semantic segmentation (the post-processing differs).
`build_model` assembles it from the spec's `model` section, the only place in `model/` that
reads the spec, by attribute access (a dataclass, OmegaConf node or SimpleNamespace).
"""

from typing import Any

import torch
from torch import nn

from model.backbone import SWIN_PRESETS, build_backbone, load_pretrained_backbone
from model.errors import UserError
from model.pixel_decoder import MSDeformAttnPixelDecoder
from model.transformer_decoder import MaskedAttentionDecoder

BACKBONE_OUT_FEATURES = ["res2", "res3", "res4", "res5"]
ENCODER_FFN_DIM = 1024  # fixed by the original for the deformable encoder


class Mask2Former(nn.Module):
    """images (B, 3, H, W) normalised float -> {pred_logits, pred_masks, aux_outputs}.

    Args:
        backbone: forward(x) -> 4 NCHW maps, with `channels` and `strides` (see model.backbone).
        pixel_decoder: backbone maps -> (mask features, 3 multi-scale maps).
        transformer_decoder: (multi-scale maps, mask features) -> predictions.
    """

    def __init__(self, backbone: nn.Module, pixel_decoder: MSDeformAttnPixelDecoder, transformer_decoder: MaskedAttentionDecoder):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder

    def forward(self, images: torch.Tensor) -> dict:
        """
        Args:
            images: (B, 3, H, W), normalised; H and W multiples of 32 keep every stride exact.

        Returns:
            pred_logits: (B, Q, K+1) class logits, the last class is no-object.
            pred_masks: (B, Q, H/4, W/4) mask logits.
            aux_outputs: list of dec_layers - 1 dicts with the same two keys, the predictions of
                the initial queries and of every decoder layer but the last (deep supervision).
        """
        features = self.backbone(images)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale_features, mask_features)


def _backbone_name_and_args(backbone_cfg: Any) -> tuple[str, dict]:
    """build_backbone's name and arguments from model.backbone."""
    if backbone_cfg.type == "resnet50":
        return "resnet50", {"use_checkpoint": bool(backbone_cfg.swin.use_checkpoint)}
    if backbone_cfg.type != "swin":
        raise UserError(f"model.backbone.type: {backbone_cfg.type!r} is not built by this platform; expected 'swin' or 'resnet50'")
    swin = backbone_cfg.swin
    if list(swin.out_indices) != [0, 1, 2, 3] or list(swin.out_features) != BACKBONE_OUT_FEATURES:
        raise UserError(
            f"model.backbone.swin.out_indices / out_features: Mask2Former uses all four stages, expected [0, 1, 2, 3] / "
            f"{BACKBONE_OUT_FEATURES}, got {list(swin.out_indices)} / {list(swin.out_features)}"
        )
    args = dict(
        patch_size=swin.patch_size,
        window_size=swin.window_size,
        mlp_ratio=swin.mlp_ratio,
        qkv_bias=swin.qkv_bias,
        drop_rate=swin.drop_rate,
        attn_drop_rate=swin.attn_drop_rate,
        drop_path_rate=swin.drop_path_rate,
        ape=swin.ape,
        patch_norm=swin.patch_norm,
        pretrain_img_size=swin.pretrain_img_size,
        use_checkpoint=swin.use_checkpoint,
    )
    if swin.type == "custom":
        args.update(embed_dim=swin.embed_dim, depths=list(swin.depths), num_heads=list(swin.num_heads))
        return "swin", args
    if swin.type not in SWIN_PRESETS:
        raise UserError(f"model.backbone.swin.type: {swin.type!r}, expected one of {list(SWIN_PRESETS) + ['custom']}")
    return f"swin_{swin.type}", args


def build_model(model_cfg: Any) -> Mask2Former:
    """Mask2Former from the spec's `model` section (keys as in the reference spec's `model:`).

    Reads model.backbone.{type, pretrained_weights, swin.*}, model.sem_seg_head.{common_stride,
    transformer_enc_layers, convs_dim, mask_dim, deformable_transformer_encoder_in_features,
    num_classes, norm} and model.mask_former.{dropout, nheads, num_object_queries, hidden_dim,
    dim_feedforward, dec_layers, pre_norm}. model.mode and the loss weights do not change the
    network. model.backbone.swin.use_checkpoint (the spec's backbone checkpointing key) also
    applies to ResNet-50. As in the original, mask_former.nheads and mask_former.dropout also configure the
    pixel decoder's deformable encoder, whose FFN width is fixed at 1024; the decoder layers
    themselves use no dropout. With model.backbone.pretrained_weights set, the backbone's
    ImageNet weights are loaded from that local file.

    Raises:
        UserError: a value the network cannot be built with, named by its key.
    """
    head, decoder = model_cfg.sem_seg_head, model_cfg.mask_former
    if head.norm != "GN":
        raise UserError(f"model.sem_seg_head.norm: {head.norm!r}, only 'GN' is supported")
    if head.convs_dim % 32 != 0:
        raise UserError(f"model.sem_seg_head.convs_dim: {head.convs_dim} must be a multiple of 32 (GroupNorm with 32 groups)")
    for key, dim in (("sem_seg_head.convs_dim", head.convs_dim), ("mask_former.hidden_dim", decoder.hidden_dim)):
        if dim % decoder.nheads != 0:
            raise UserError(f"model.{key}: {dim} must be divisible by model.mask_former.nheads ({decoder.nheads})")
    if decoder.dec_layers < 1:
        raise UserError(f"model.mask_former.dec_layers: {decoder.dec_layers}, expected >= 1")

    name, args = _backbone_name_and_args(model_cfg.backbone)
    backbone = build_backbone(name, **args)
    if model_cfg.backbone.pretrained_weights:
        load_pretrained_backbone(backbone, model_cfg.backbone.pretrained_weights)

    in_features = list(head.deformable_transformer_encoder_in_features)
    unknown = [f for f in in_features if f not in BACKBONE_OUT_FEATURES]
    if unknown or not in_features:
        raise UserError(f"model.sem_seg_head.deformable_transformer_encoder_in_features: {in_features}, expected names among {BACKBONE_OUT_FEATURES}")
    try:
        pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=backbone.channels,
            in_strides=backbone.strides,
            encoder_in_features=[BACKBONE_OUT_FEATURES.index(f) for f in in_features],
            conv_dim=head.convs_dim,
            mask_dim=head.mask_dim,
            num_encoder_layers=head.transformer_enc_layers,
            nheads=decoder.nheads,
            dim_feedforward=ENCODER_FFN_DIM,
            dropout=decoder.dropout,
            common_stride=head.common_stride,
        )
    except ValueError as exc:
        raise UserError(f"model.sem_seg_head: deformable_transformer_encoder_in_features {in_features} with common_stride {head.common_stride}: {exc}") from exc
    transformer_decoder = MaskedAttentionDecoder(
        in_channels=head.convs_dim,
        num_classes=head.num_classes,
        hidden_dim=decoder.hidden_dim,
        num_queries=decoder.num_object_queries,
        nheads=decoder.nheads,
        dim_feedforward=decoder.dim_feedforward,
        dec_layers=decoder.dec_layers,
        pre_norm=decoder.pre_norm,
        mask_dim=head.mask_dim,
    )
    return Mask2Former(backbone, pixel_decoder, transformer_decoder)
