"""Mask2Former: universal image segmentation (panoptic, instance, semantic) in plain PyTorch.

    from model import PRESETS, build_mask2former
    net = build_mask2former(**PRESETS["swin_tiny_coco_panoptic"])   # or explicit keyword arguments

See model/README.md. The names below are imported on first use, so that `model.errors` (which
every command line imports first) does not pull in torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "PRESETS": "model.presets",
    "Mask2Former": "model.mask2former",
    "build_mask2former": "model.mask2former",
    "build_backbone": "model.backbone",
    "load_pretrained_backbone": "model.backbone",
    "load_weights": "model.checkpoint",
    "read_checkpoint": "model.checkpoint",
    "Postprocessor": "model.postprocess",
    "TASKS": "model.tasks",
    "ArgumentError": "model.errors",
    "UserError": "model.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
