"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder plus an FPN.

The coarsest backbone maps (res3..res5 by default) are projected to `conv_dim` channels and
refined together by post-norm deformable-attention encoder layers; an FPN then walks the finer
maps (res2) up to `common_stride`. Outputs: the per-pixel mask features the queries are dotted
with, and the three coarsest refined maps [1/32, 1/16, 1/8] the transformer decoder attends to.
It runs in its parameters' dtype with autocast off: float32 under mixed precision, as in the
original, and bfloat16 only when the whole model was cast (inference with bf16 weights). With
`fpn_autocast` the FPN and mask-feature convolutions follow the caller's autocast instead.
"""

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.ms_deform_attn import MSDeformAttn
from model.position_encoding import PositionEmbeddingSine


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Detectron2's 'xavier' fill (as Caffe2): kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels -> add & norm -> FFN -> add & norm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """src, pos: (B, S, d_model); reference_points: (B, S, L, 2); (H_l, W_l) per level -> (B, S, d_model)."""
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        return self.norm2(src + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src))))))


class DeformableEncoder(nn.Module):
    """Encoder layers over the flattened levels, each pixel querying from its own centre."""

    def __init__(self, d_model: int, n_heads: int, num_layers: int, dim_feedforward: int, dropout: float, n_levels: int, n_points: int):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, dim_feedforward, dropout, n_levels, n_heads, n_points) for _ in range(num_layers)
        )
        # Deformable DETR: xavier for every matrix, then the attention's own init, then the level embedding.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], batch: int, device: torch.device) -> torch.Tensor:
        """Pixel centres of every level in [0, 1] (x, y): (B, S, L, 2), the same point on each level."""
        points = []
        for height, width in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device) / height,
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device) / width,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        points = torch.cat(points, 0)  # (S, 2)
        return points[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """srcs, pos_embeds: per level (B, d_model, H_l, W_l) -> ((B, S, d_model), [(H_l, W_l)])."""
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat([pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, pos in enumerate(pos_embeds)], 1)
        reference_points = self.reference_points(shapes, src_flat.shape[0], src_flat.device)
        out = src_flat
        for layer in self.layers:
            out = layer(out, pos_flat, reference_points, shapes)
        return out, shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone maps -> (mask features, multi-scale features for the transformer decoder).

    Args:
        in_channels: channels of the backbone maps, finest first (res2..res5).
        in_strides: their strides (4, 8, 16, 32).
        encoder_in_features: indices (into the backbone maps) refined by the deformable encoder:
            the coarsest ones, e.g. (1, 2, 3) for res3..res5. The finer maps go through the FPN.
        conv_dim: channels of the encoder and FPN (GroupNorm(32) needs a multiple of 32).
        mask_dim: channels of the mask features.
        num_encoder_layers: deformable encoder layers (0 leaves the projected maps as they are).
        nheads, dim_feedforward, dropout, n_points: of the encoder layers.
        common_stride: stride of the mask features (4: one FPN level below res3).
        fpn_autocast: False (the original): everything runs in float32 with autocast off. True: the
            FPN's lateral and output convolutions and the `mask_features` convolution run under the
            caller's autocast (bf16 under bf16-mixed), while the deformable-attention encoder stays
            float32. Without autocast (export, deployment, fp32 training) both give the same result.
            It adds no parameter: checkpoints are the same either way.
    """

    num_feature_levels = 3  # maps handed to the transformer decoder

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        encoder_in_features: Sequence[int] = (1, 2, 3),
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_encoder_layers: int = 6,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_points: int = 4,
        common_stride: int = 4,
        fpn_autocast: bool = False,
    ):
        super().__init__()
        self.fpn_autocast = fpn_autocast
        self.encoder_in_features = sorted(encoder_in_features)
        finest_encoder_stride = in_strides[self.encoder_in_features[0]]
        # The encoder takes every level from its finest one up; the FPN every finer level down to common_stride.
        if self.encoder_in_features != list(range(self.encoder_in_features[0], len(in_strides))):
            raise ValueError(f"encoder_in_features {self.encoder_in_features} must be the coarsest backbone levels (strides {list(in_strides)})")
        self.fpn_in_features = [i for i, stride in enumerate(in_strides) if common_stride <= stride < finest_encoder_stride]
        if common_stride not in list(in_strides)[: self.encoder_in_features[0] + 1]:
            raise ValueError(f"common_stride {common_stride} must be a backbone stride no coarser than the encoder's finest ({list(in_strides)})")
        if len(self.encoder_in_features) + len(self.fpn_in_features) < self.num_feature_levels:
            raise ValueError(f"the pixel decoder needs at least {self.num_feature_levels} output levels")

        # Coarsest first: res5, res4, res3.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[i], conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for i in reversed(self.encoder_in_features)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = DeformableEncoder(
            conv_dim, nheads, num_encoder_layers, dim_feedforward, dropout, len(self.encoder_in_features), n_points
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        # FPN, coarsest first (res2 only with the defaults).
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for i in reversed(self.fpn_in_features):
            lateral = nn.Conv2d(in_channels[i], conv_dim, kernel_size=1, bias=False)
            output = nn.Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=False)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.lateral_convs.append(nn.Sequential(lateral, nn.GroupNorm(32, conv_dim)))
            self.output_convs.append(nn.Sequential(output, nn.GroupNorm(32, conv_dim), nn.ReLU()))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: backbone maps res2..res5, (B, C_i, H / s_i, W / s_i).

        Returns:
            mask_features: (B, mask_dim, H / common_stride, W / common_stride), in the parameters' dtype;
                with fpn_autocast under autocast, in the autocast dtype (bf16 under bf16-mixed).
            multi_scale_features: 3 maps (B, conv_dim, h, w), coarsest first ([1/32, 1/16, 1/8]), in the
                parameters' dtype; with fpn_autocast under autocast, a map the FPN made (when the encoder
                refines fewer than 3 levels) comes in the dtype autocast gives its GroupNorm.
        """
        dtype = self.mask_features.weight.dtype
        device_type = features[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for proj, i in zip(self.input_proj, reversed(self.encoder_in_features)):
                x = features[i].to(dtype)
                srcs.append(proj(x))
                pos.append(self.pe_layer(x).to(dtype))
            memory, shapes = self.transformer(srcs, pos)
            batch = memory.shape[0]
            outs = [
                level.transpose(1, 2).reshape(batch, -1, height, width)
                for level, (height, width) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
            ]
        # The FPN's full-resolution 3x3 convolution in float32 is where cuDNN picks an FFT plan (33 GiB of
        # workspace at 512x512 batch 8 on an H200); fpn_autocast lets it run in the caller's precision.
        fpn_precision = contextlib.nullcontext() if self.fpn_autocast else torch.autocast(device_type=device_type, enabled=False)
        with fpn_precision:
            for lateral, output, i in zip(self.lateral_convs, self.output_convs, reversed(self.fpn_in_features)):
                lat = lateral(features[i].to(dtype))
                outs.append(output(lat + F.interpolate(outs[-1], size=lat.shape[-2:], mode="bilinear", align_corners=False)))
            return self.mask_features(outs[-1]), outs[: self.num_feature_levels]
