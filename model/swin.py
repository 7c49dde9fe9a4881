"""Swin Transformer (Liu et al. 2021) as the Mask2Former backbone, at any input size.

Written to the semantics of the Swin used by Mask2Former (pad each stage to a multiple of the
window, then shift; never shrink the window; a LayerNorm on each output) so that public Swin
and Mask2Former weights give the outputs they were trained with at any input size. timm's Swin
shifts before padding, which changes the attention at sizes that are not a multiple of the
window (e.g. 1024 / 4 = 256 = 36 * 7 + 4), so it is not used. Parameter names follow the
official Swin release. Building by name and loading weights: `model.backbone`.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from model.errors import ArgumentError


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of window_size -> (B * num_windows, window_size**2, C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of window_partition: (B * num_windows, window_size**2, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        # One bias per head for each of the (2w-1)^2 relative offsets between two tokens of a window.
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (N, N, 2) >= 0
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window_size - 1) + relative[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) of 0 / -100 (shifted windows) or None -> (B * nW, N, C)."""
        batch_windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch_windows, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # (B * nW, heads, N, d)
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(tokens, tokens, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(batch_windows, tokens, channels)
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Module):
    """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, height: int, width: int, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, H*W, C); shift_mask: (nW, N, N) for the padded map, used when shift_size > 0."""
        batch, _, channels = x.shape
        shortcut = x
        x = self.norm1(x).view(batch, height, width, channels)
        # Pad to whole windows first, then shift: the mask's regions then match the shifted content.
        pad_b = (self.window_size - height % self.window_size) % self.window_size
        pad_r = (self.window_size - width % self.window_size) % self.window_size
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        padded_h, padded_w = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), shift_mask if self.shift_size > 0 else None)
        x = window_reverse(windows, self.window_size, padded_h, padded_w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :height, :width, :].reshape(batch, height * width, channels)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (C -> 4C), LayerNorm, project to 2C: halves H and W."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, ceil(H/2) * ceil(W/2), 2C)"""
        batch, _, channels = x.shape
        x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, width % 2, 0, height % 2))
        # Order (top-left, bottom-left, top-right, bottom-right) as in the original release.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    """`depth` blocks alternating plain and shifted windows, then (except the last stage) a PatchMerging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, mlp_ratio, qkv_bias, drop, attn_drop, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def shift_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(nW, N, N): -100 between tokens that the cyclic shift brought together from different
        regions of the padded map, 0 elsewhere."""
        window, shift = self.window_size, self.shift_size
        padded_h = (height + window - 1) // window * window  # not -(-h // w): ONNX integer division truncates
        padded_w = (width + window - 1) // window * window
        rows = torch.arange(padded_h, device=device)
        cols = torch.arange(padded_w, device=device)
        # Region 0: [0, P - window), 1: [P - window, P - shift), 2: [P - shift, P) along each axis.
        row_region = (rows >= padded_h - window).long() + (rows >= padded_h - shift).long()
        col_region = (cols >= padded_w - window).long() + (cols >= padded_w - shift).long()
        regions = (row_region[:, None] * 3 + col_region[None, :]).view(1, padded_h, padded_w, 1)
        regions = window_partition(regions, window).squeeze(-1)  # (nW, N)
        different = regions[:, None, :] != regions[:, :, None]
        return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """x: (B, H*W, C) -> (stage output (B, H*W, C), downsampled (B, H'*W', 2C) or the output, H', W')."""
        mask = self.shift_mask(height, width, x.device).to(x.dtype) if len(self.blocks) > 1 else None
        for block in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(block, x, height, width, mask, use_reentrant=False)
            else:
                x = block(x, height, width, mask)
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> embed_dim channels (input padded to whole patches)."""

    def __init__(self, patch_size: int, embed_dim: int, patch_norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/p), ceil(W/p))"""
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.patch_size, 0, -height % self.patch_size))
        x = self.proj(x)
        if self.norm is not None:
            batch, channels, h, w = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(batch, channels, h, w)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer (Liu et al. 2021) as the Mask2Former backbone: four stages, each output
    LayerNorm-ed, returned as NCHW maps at strides patch_size * (1, 2, 4, 8).

    Parameter names follow the official Swin release (`layers.i.blocks.j.attn.qkv`,
    `layers.i.downsample` at the end of stage i), so its checkpoints load as they are.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int = 4,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        pretrain_img_size: int = 224,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ArgumentError("depths" if len(depths) != 4 else "num_heads", f"Swin needs 4 stages: got depths {list(depths)} and num_heads {list(num_heads)}")
        self.channels = [embed_dim * 2**i for i in range(4)]
        self.strides = [patch_size * 2**i for i in range(4)]
        for channels, heads in zip(self.channels, num_heads):
            if channels % heads != 0:
                raise ArgumentError("num_heads", f"{list(num_heads)}: the Swin stage width {channels} (embed_dim {embed_dim}) is not divisible by {heads}")
        self.patch_embed = PatchEmbed(patch_size, embed_dim, patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth grows linearly over all blocks of all stages.
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(4)]
        self.layers = nn.ModuleList(
            SwinStage(
                self.channels[i], depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                rates[starts[i]:starts[i] + depths[i]], downsample=i < 3, use_checkpoint=use_checkpoint,
            )
            for i in range(4)
        )
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        self.apply(self._init_linear_and_norm)

    @staticmethod
    def _init_linear_and_norm(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, C * 2**i, H / (4 * 2**i), W / (4 * 2**i)) for i in 0..3] (sizes rounded up)."""
        x = self.patch_embed(x)
        batch, _, height, width = x.shape
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(height, width), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs = []
        for stage, norm, channels in zip(self.layers, self.out_norms, self.channels):
            out, x, next_h, next_w = stage(x, height, width)
            outputs.append(norm(out).view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous())
            height, width = next_h, next_w
        return outputs
