"""Mask2Former: universal image segmentation (panoptic, instance, semantic) in plain PyTorch."""
