"""Mask2Former's masked-attention transformer decoder: learned queries -> class logits and masks.

Each layer lets the queries attend to one scale of the pixel decoder's features (1/32, 1/16,
1/8 in turn), but only inside the foreground of the mask the previous prediction gave them
(masked attention), then to each other, then through an FFN. After the initial queries and
after every layer, a shared head predicts a class per query and a mask per query (the dot
product of a query embedding with the per-pixel mask features); all predictions but the last
are returned for deep supervision.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.errors import ArgumentError
from model.pixel_decoder import c2_xavier_fill
from model.position_encoding import PositionEmbeddingSine


def attention_mask_from_masks(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Where each query may attend on a feature map of `size`: inside its predicted mask.

    Args:
        mask_logits: (B, Q, h, w) mask logits of the previous prediction.
        size: (H, W) of the feature map the next layer attends to.

    Returns:
        (B, 1, Q, H*W) bool, True where attention is allowed (sigmoid of the bilinearly resized
        logits >= 0.5). A query whose mask is empty at this size may attend everywhere, so no
        query is left without keys. Detached: no gradient flows through the mask.
    """
    resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    allowed = resized.sigmoid().flatten(2) >= 0.5
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections on batch-first tensors.

    Initialised like nn.MultiheadAttention inside Mask2Former's layers: the joint (3d, d)
    in-projection xavier-uniform, the out-projection xavier-uniform, all biases zero.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"hidden_dim ({embed_dim}) must be divisible by nheads ({num_heads})")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query: (B, Lq, d); key, value: (B, Lk, d); allowed: bool broadcastable to (B, heads, Lq, Lk),
        True where attention is allowed -> (B, Lq, d)."""
        batch, num_queries, dim = query.shape
        q = self.q_proj(query).view(batch, num_queries, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(key).view(batch, key.shape[1], self.num_heads, -1).transpose(1, 2)
        v = self.v_proj(value).view(batch, value.shape[1], self.num_heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(batch, num_queries, dim))


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each with a residual and a LayerNorm
    (after the residual by default, before the block with pre_norm)."""

    def __init__(self, hidden_dim: int, nheads: int, dim_feedforward: int, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.cross_attn = Attention(hidden_dim, nheads)
        self.cross_norm = nn.LayerNorm(hidden_dim)
        self.self_attn = Attention(hidden_dim, nheads)
        self.self_norm = nn.LayerNorm(hidden_dim)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.ffn_norm = nn.LayerNorm(hidden_dim)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """queries, query_pos: (B, Q, d); memory, memory_pos: (B, HW, d); allowed: (B, 1, Q, HW) -> (B, Q, d)."""
        if self.pre_norm:
            x = self.cross_norm(queries)
            queries = queries + self.cross_attn(x + query_pos, memory + memory_pos, memory, allowed)
            x = self.self_norm(queries)
            queries = queries + self.self_attn(x + query_pos, x + query_pos, x)
            x = self.ffn_norm(queries)
            return queries + self.linear2(F.relu(self.linear1(x)))
        queries = self.cross_norm(queries + self.cross_attn(queries + query_pos, memory + memory_pos, memory, allowed))
        queries = self.self_norm(queries + self.self_attn(queries + query_pos, queries + query_pos, queries))
        return self.ffn_norm(queries + self.linear2(F.relu(self.linear1(queries))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedAttentionDecoder(nn.Module):
    """Queries -> per-query class logits and mask logits, refined over `dec_layers - 1` layers.

    Args:
        in_channels: channels of the pixel decoder's multi-scale features (projected by a 1x1
            conv when they differ from hidden_dim).
        num_classes: classes, the no-object class excluded.
        hidden_dim: width of the queries.
        num_queries: number of queries.
        nheads: attention heads.
        dim_feedforward: FFN hidden width.
        dec_layers: predictions made, the one from the initial queries included
            (10 -> 9 decoder layers).
        pre_norm: LayerNorm before each block instead of after the residual.
        mask_dim: channels of the mask features.
    """

    num_feature_levels = 3

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        pre_norm: bool = False,
        mask_dim: int = 256,
    ):
        super().__init__()
        if dec_layers < 1:
            raise ArgumentError("dec_layers", f"{dec_layers}, expected >= 1")
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, nheads, dim_feedforward, pre_norm) for _ in range(dec_layers - 1))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # the queries' initial content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # their positional embedding, added at every attention
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def predict(self, queries: torch.Tensor, mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries: (B, Q, d); mask_features: (B, mask_dim, h, w) -> logits (B, Q, K+1), masks (B, Q, h, w)."""
        x = self.decoder_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        return self.class_embed(x), masks

    def forward(self, features: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        """
        Args:
            features: 3 maps (B, in_channels, h_l, w_l), coarsest first.
            mask_features: (B, mask_dim, H/4, W/4).

        Returns:
            pred_logits: (B, Q, K+1), no-object last; pred_masks: (B, Q, H/4, W/4) logits;
            aux_outputs: the dec_layers - 1 earlier predictions, oldest first, as
            [{'pred_logits', 'pred_masks'}].
        """
        sizes, memories, positions = [], [], []
        for level, (feature, proj) in enumerate(zip(features, self.input_proj)):
            sizes.append(tuple(feature.shape[-2:]))
            positions.append(self.pe_layer(feature).to(feature.dtype).flatten(2).transpose(1, 2))  # (B, HW, d)
            memories.append((proj(feature).flatten(2) + self.level_embed.weight[level][None, :, None]).transpose(1, 2))

        batch = mask_features.shape[0]
        queries = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)

        logits, masks = self.predict(queries, mask_features)
        predictions = [(logits, masks)]
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            allowed = attention_mask_from_masks(masks, sizes[level])
            queries = layer(queries, query_pos, memories[level], positions[level], allowed)
            logits, masks = self.predict(queries, mask_features)
            predictions.append((logits, masks))

        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in predictions[:-1]],
        }
