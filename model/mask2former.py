"""Mask2Former (Cheng et al., CVPR 2022): backbone -> pixel decoder -> masked-attention decoder.

`Mask2Former` maps normalised images to per-query class logits and mask logits; the same
network serves panoptic, instance and semantic segmentation (the post-processing differs).
`build_mask2former(...)` is the one factory, with explicit keyword arguments whose defaults are
the original's Swin-T COCO panoptic recipe; `model.presets.PRESETS` names the published configurations.
"""

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from model.backbone import build_backbone, load_pretrained_backbone
from model.errors import ArgumentError
from model.pixel_decoder import MSDeformAttnPixelDecoder
from model.transformer_decoder import MaskedAttentionDecoder

BACKBONE_OUT_FEATURES = ("res2", "res3", "res4", "res5")
ENCODER_FFN_DIM = 1024  # fixed by the original for the deformable encoder
GROUP_NORM_GROUPS = 32  # the pixel decoder's GroupNorm(32, conv_dim)


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


def build_mask2former(
    backbone: str = "swin_tiny",
    *,
    num_classes: int = 133,
    num_queries: int = 100,
    hidden_dim: int = 256,
    nheads: int = 8,
    dim_feedforward: int = 2048,
    dec_layers: int = 10,
    pre_norm: bool = False,
    conv_dim: int = 256,
    mask_dim: int = 256,
    num_encoder_layers: int = 6,
    encoder_in_features: Sequence[str] = ("res3", "res4", "res5"),
    common_stride: int = 4,
    dropout: float = 0.0,
    fpn_autocast: bool = False,
    backbone_kwargs: Optional[Mapping[str, Any]] = None,
    backbone_weights: Optional[str] = None,
) -> Mask2Former:
    """A randomly initialised Mask2Former (the backbone from local ImageNet weights if given).

    Args:
        backbone: a name `model.backbone.build_backbone` knows ('swin_tiny' ... 'swin_large',
            'swin', 'resnet50').
        num_classes: classes predicted, no-object excluded.
        num_queries: object queries (the most segments one image can hold).
        hidden_dim, nheads, dim_feedforward, pre_norm: of the transformer decoder layers.
        dec_layers: predictions made, the one from the initial queries included (10: 9 layers).
        conv_dim: channels of the pixel decoder (a multiple of 32, for GroupNorm).
        mask_dim: channels of the per-pixel mask embeddings.
        num_encoder_layers: deformable-attention encoder layers of the pixel decoder.
        encoder_in_features: the backbone maps ('res2' ... 'res5') the encoder attends to.
        common_stride: stride of the mask features (4 or 8).
        dropout: of the deformable encoder; as in the original, nheads also sets its heads and its
            FFN width is fixed at 1024; the decoder layers use no dropout.
        fpn_autocast: the pixel decoder's FPN and mask-feature convolutions follow the caller's
            autocast instead of float32 (see `MSDeformAttnPixelDecoder`); no weights change.
        backbone_kwargs: further arguments of `build_backbone` (window_size, drop_path_rate,
            use_checkpoint, embed_dim/depths/num_heads for 'swin', ...).
        backbone_weights: a local .pth/.safetensors file of ImageNet weights for the backbone.

    Raises:
        ArgumentError: a value the network cannot be built with, named by its argument.
        UserError: an unreadable backbone_weights file.
    """
    if conv_dim % GROUP_NORM_GROUPS != 0:
        raise ArgumentError("conv_dim", f"{conv_dim} must be a multiple of {GROUP_NORM_GROUPS} (GroupNorm with {GROUP_NORM_GROUPS} groups)")
    for name, dim in (("conv_dim", conv_dim), ("hidden_dim", hidden_dim)):
        if dim % nheads != 0:
            raise ArgumentError(name, f"{dim} must be divisible by nheads ({nheads})")
    unknown = [f for f in encoder_in_features if f not in BACKBONE_OUT_FEATURES]
    if unknown or not encoder_in_features:
        raise ArgumentError("encoder_in_features", f"{list(encoder_in_features)}, expected names among {list(BACKBONE_OUT_FEATURES)}")

    network = build_backbone(backbone, **(backbone_kwargs or {}))
    if backbone_weights:
        load_pretrained_backbone(network, backbone_weights)
    try:
        pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=network.channels,
            in_strides=network.strides,
            encoder_in_features=[BACKBONE_OUT_FEATURES.index(f) for f in encoder_in_features],
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            num_encoder_layers=num_encoder_layers,
            nheads=nheads,
            dim_feedforward=ENCODER_FFN_DIM,
            dropout=dropout,
            common_stride=common_stride,
            fpn_autocast=fpn_autocast,
        )
    except ValueError as exc:
        raise ArgumentError("encoder_in_features", f"{list(encoder_in_features)} with common_stride {common_stride}: {exc}") from exc
    transformer_decoder = MaskedAttentionDecoder(
        in_channels=conv_dim,
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        num_queries=num_queries,
        nheads=nheads,
        dim_feedforward=dim_feedforward,
        dec_layers=dec_layers,
        pre_norm=pre_norm,
        mask_dim=mask_dim,
    )
    return Mask2Former(network, pixel_decoder, transformer_decoder)
