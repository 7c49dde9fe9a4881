"""The published configurations, as plain data (no torch: a spec is checked against them cheaply).

SWIN_PRESETS: the Swin sizes (Liu et al. 2021) as (embed_dim, depths, num_heads).
PRESETS: the Mask2Former models of the paper, as the `build_mask2former` arguments that differ
from its defaults (the Swin-T COCO panoptic recipe).
"""

from typing import Any

# embed_dim, depths, num_heads of the published Swin sizes.
SWIN_PRESETS = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}

# The published Mask2Former configurations (arguments that differ from the defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "swin_tiny_coco_panoptic": dict(backbone="swin_tiny", num_classes=133),
    "swin_small_coco_panoptic": dict(backbone="swin_small", num_classes=133),
    "swin_base_coco_panoptic": dict(backbone="swin_base", num_classes=133, backbone_kwargs=dict(window_size=12, pretrain_img_size=384)),
    "swin_large_coco_panoptic": dict(
        backbone="swin_large", num_classes=133, num_queries=200, backbone_kwargs=dict(window_size=12, pretrain_img_size=384)
    ),
    "resnet50_coco_panoptic": dict(backbone="resnet50", num_classes=133),
    "swin_tiny_coco_instance": dict(backbone="swin_tiny", num_classes=80),
    "swin_tiny_ade_semantic": dict(backbone="swin_tiny", num_classes=150),
}
