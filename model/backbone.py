"""Backbones that turn an image into the four feature maps res2..res5 (strides 4, 8, 16, 32).

`build_backbone(name, ...)` is the one entry point; every backbone it returns has the same
contract: forward(x (B, 3, H, W)) -> [res2, res3, res4, res5] as NCHW maps, and the attributes
`channels` and `strides` describe them. The rest of the model never asks which one it has.
Swin is ours (`model.swin`, the Mask2Former semantics); ResNet-50 is timm's, with frozen
BatchNorm as in the original Mask2Former. `load_pretrained_backbone` reads local ImageNet
weights (official Swin release, timm, torchvision) into either.
"""

import logging
import re
from typing import Any, NamedTuple

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from model.checkpoint import MODULE_PREFIX, read_state_dict
from model.errors import ArgumentError
from model.presets import SWIN_PRESETS
from model.swin import SwinTransformer

logger = logging.getLogger(__name__)

BACKBONES = ["resnet50", "swin"] + [f"swin_{size}" for size in SWIN_PRESETS]
WEIGHTS_ARGUMENT = "backbone_weights"  # build_mask2former's name for the file, named in loading errors


class ResNet50(nn.Module):
    """timm's ResNet-50 (torchvision layout, stride in the 3x3 conv) with frozen BatchNorm,
    returning the outputs of layer1..layer4 (strides 4, 8, 16, 32; 256..2048 channels)."""

    def __init__(self, use_checkpoint: bool = False):
        super().__init__()
        body = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        self.channels = body.feature_info.channels()
        self.strides = body.feature_info.reduction()
        self.body = freeze_batch_norm_2d(body)
        self.body.set_grad_checkpointing(use_checkpoint)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [res2, res3, res4, res5] NCHW."""
        return self.body(x)


def build_backbone(name: str, *, use_checkpoint: bool = False, **swin_kwargs: Any) -> nn.Module:
    """The backbone called `name`, with randomly initialised weights.

    Args:
        name: 'resnet50'; 'swin_tiny' | 'swin_small' | 'swin_base' | 'swin_large' (the published
            embed_dim / depths / num_heads); or 'swin' with explicit embed_dim, depths (4 ints)
            and num_heads (4 ints).
        use_checkpoint: activation checkpointing (less memory, slower), for either family.
        swin_kwargs: further arguments of `model.swin.SwinTransformer` (window_size, drop_path_rate, ...).

    Returns:
        A module with forward(x (B, 3, H, W)) -> [res2, res3, res4, res5] NCHW and the
        attributes `channels` and `strides` (4 ints each).
    """
    if name == "resnet50":
        if swin_kwargs:
            raise ArgumentError("backbone", f"'resnet50' takes only use_checkpoint, got {sorted(swin_kwargs)}")
        return ResNet50(use_checkpoint=use_checkpoint)
    shape = ("embed_dim", "depths", "num_heads")
    if name.startswith("swin_") and name[5:] in SWIN_PRESETS:
        if any(key in swin_kwargs for key in shape):
            raise ArgumentError("backbone", f"{name!r} fixes embed_dim, depths and num_heads; use 'swin' to set them")
        swin_kwargs.update(zip(shape, SWIN_PRESETS[name[5:]]))
    elif name != "swin":
        raise ArgumentError("backbone", f"{name!r} is not built here; expected one of {BACKBONES}")
    elif not all(key in swin_kwargs for key in shape):
        raise ArgumentError("backbone", "'swin' needs embed_dim, depths and num_heads")
    return SwinTransformer(use_checkpoint=use_checkpoint, **swin_kwargs)


class LoadReport(NamedTuple):
    """Keys of the backbone the file did not fill, and keys of the file the backbone does not have."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _swin_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Swin release / Mask2Former / timm names -> ours. timm puts the PatchMerging of
    stage i at the start of stage i+1; Mask2Former calls the output norms norm0..norm3."""
    timm_layout = not any(k.startswith("layers.0.downsample.") for k in state) and any(k.startswith("layers.1.downsample.") for k in state)
    out = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask", "relative_coords_table")):
            continue  # buffers recomputed from the window size
        if timm_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        key = re.sub(r"^norm(\d)\.", r"out_norms.\1.", key)
        out[key] = value
    return out


def _preview(keys: list[str], count: int = 4) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def load_pretrained_backbone(backbone: nn.Module, path: str) -> LoadReport:
    """Load local ImageNet weights into a backbone from `build_backbone`; never downloads.

    Swin: the official release (`{'model': ...}`, `layers.0.downsample...`), timm's layout
    (`layers.1.downsample...`, .pth or .safetensors) or the backbone of a Mask2Former checkpoint. ResNet-50:
    torchvision or timm. Classifier heads and the final classification norm are reported as
    unexpected and ignored; the output LayerNorms of Swin, absent from ImageNet checkpoints,
    are reported missing and keep their initialisation.

    Raises:
        UserError: the file is missing or unreadable.
        ArgumentError(WEIGHTS_ARGUMENT): the file holds none of the backbone's weights, or a weight
            has another shape than the backbone's (e.g. another Swin size or window).
    """
    state = read_state_dict(path, prefixes=(MODULE_PREFIX, "module.", "backbone."))  # also the backbone of a Mask2Former checkpoint
    if isinstance(backbone, SwinTransformer):
        state = _swin_keys(state)
        example = "patch_embed.proj.weight"
    elif isinstance(backbone, ResNet50):
        state = {f"body.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        example = "conv1.weight"
    else:
        raise TypeError(f"not a backbone from build_backbone: {type(backbone).__name__}")

    own = backbone.state_dict()
    if not own.keys() & state.keys():
        raise ArgumentError(WEIGHTS_ARGUMENT, f"{path!r} has none of the weights of a {type(backbone).__name__} (e.g. {example!r})")
    for key in own.keys() & state.keys():
        if own[key].shape != state[key].shape:
            hint = " (the checkpoint was trained with another window_size)" if "relative_position_bias_table" in key else ""
            raise ArgumentError(
                WEIGHTS_ARGUMENT,
                f"{path!r} does not fit this backbone: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(own[key].shape)}{hint}"
            )
    result = backbone.load_state_dict(state, strict=False)
    report = LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys))
    logger.info(
        "backbone weights from %s: %d missing [%s], %d unexpected [%s]",
        path, len(report.missing_keys), _preview(report.missing_keys), len(report.unexpected_keys), _preview(report.unexpected_keys),
    )
    return report
