"""Import of public Mask2Former checkpoints into `model.mask2former.Mask2Former`."""

from model.convert.hf import convert_hf_checkpoint, load_hf_checkpoint, mask2former_kwargs

__all__ = ["convert_hf_checkpoint", "load_hf_checkpoint", "mask2former_kwargs"]
