"""Sine positional encoding of a feature map, as DETR and Mask2Former use it.

Each pixel gets `num_pos_feats` sine/cosine features of its normalised row and the same of its
column; the pixel decoder adds them to its deformable-attention queries and the transformer
decoder to its cross-attention keys.
"""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding of (row, column), coordinates normalised to (0, 2*pi].

    Args:
        num_pos_feats: features per axis; the output has 2 * num_pos_feats channels
            (row features first, then column features).
        temperature: base of the geometric progression of wavelengths.
        normalize: divide the 1-based coordinates by the map's height/width before scaling.
        scale: multiplier applied after normalisation (2 * pi by default).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), only its shape and device are used -> (B, 2 * num_pos_feats, H, W) float32."""
        batch, _, height, width = x.shape
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=x.device)[:, None].expand(height, width)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=x.device)[None, :].expand(height, width)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (height + eps) * self.scale
            x_embed = x_embed / (width + eps) * self.scale

        # Feature pairs (2i, 2i+1) share the wavelength temperature^(2i / num_pos_feats).
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, None] / dim_t  # (H, W, F)
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (2F, H, W)
        return pos.unsqueeze(0).expand(batch, -1, -1, -1)
