"""Import of public Mask2Former checkpoints into `model.mask2former.Mask2Former`."""

from model.convert.hf import convert_hf_checkpoint, load_hf_checkpoint

__all__ = ["convert_hf_checkpoint", "load_hf_checkpoint"]
