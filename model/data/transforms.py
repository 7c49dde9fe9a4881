"""Geometric augmentations that move an image and its target masks together.

Every transform is called as `transform(image, masks) -> (image, masks, size)` with
image (3, H, W) uint8 and masks (N, H, W) bool; `size` is the (h, w) of the image content in the
output, which is smaller than the output only where the transform padded it (bottom / right, zeros).
Randomness comes from torch's global generator, which DataLoader seeds in each worker.

- `ResizeCrop` (training, the reference's): random flip, shortest edge resized to a random choice of
  sizes with the longest edge capped, then a random crop.
- `LargeScaleJitter` (training): random flip, resize to a random scale in [0.1, 2.0] of the crop size,
  random crop, pad to the crop size.
- `ResizeShortestEdge` (evaluation): shortest edge to one size, longest edge capped; aspect kept.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as nnf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

Transformed = tuple[torch.Tensor, torch.Tensor, tuple[int, int]]


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(h, w) with the shortest edge `short_edge` and the aspect ratio kept, shrunk so the longest edge <= max_size."""
    scale = short_edge / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize(image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image bilinear with antialiasing, masks nearest, both to size (h, w)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, masks
    image = tvf.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    masks = tvf.resize(masks, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    return image, masks


def random_flip(image: torch.Tensor, masks: torch.Tensor, probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror both left-right with the given probability."""
    if torch.rand(()) < probability:
        return image.flip(-1), masks.flip(-1)
    return image, masks


def random_crop(image: torch.Tensor, masks: torch.Tensor, crop_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of at most crop_size (h, w) at a uniformly random position; a smaller side is kept whole."""
    height, width = image.shape[-2:]
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
    top = int(torch.randint(height - crop_h + 1, ()))
    left = int(torch.randint(width - crop_w + 1, ()))
    window = (..., slice(top, top + crop_h), slice(left, left + crop_w))
    return image[window], masks[window]


def pad_bottom_right(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad the last two dimensions at the bottom and right up to size (h, w)."""
    return nnf.pad(tensor, (0, size[1] - tensor.shape[-1], 0, size[0] - tensor.shape[-2]))


class ResizeShortestEdge:
    """Evaluation resize: shortest edge `min_size`, longest edge at most `max_size`; no crop, no flip."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: torch.Tensor, masks: torch.Tensor) -> Transformed:
        size = shortest_edge_size(image.shape[-2], image.shape[-1], self.min_size, self.max_size)
        image, masks = resize(image, masks, size)
        return image, masks, size


class ResizeCrop:
    """Training: flip, shortest edge to a random one of `min_sizes` (longest <= `max_size`), random crop (h, w)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int, crop_size: Sequence[int], flip_probability: float = 0.5) -> None:
        self.min_sizes = list(min_sizes)
        self.max_size = max_size
        self.crop_size = tuple(crop_size)
        self.flip_probability = flip_probability

    def __call__(self, image: torch.Tensor, masks: torch.Tensor) -> Transformed:
        image, masks = random_flip(image, masks, self.flip_probability)
        short_edge = self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]
        image, masks = resize(image, masks, shortest_edge_size(image.shape[-2], image.shape[-1], short_edge, self.max_size))
        image, masks = random_crop(image, masks, self.crop_size)
        return image, masks, (image.shape[-2], image.shape[-1])


class LargeScaleJitter:
    """Training: flip, fit a random `min_scale`..`max_scale` multiple of the crop size (aspect kept), random crop, pad."""

    def __init__(
        self, crop_size: Sequence[int], min_scale: float = 0.1, max_scale: float = 2.0, flip_probability: float = 0.5
    ) -> None:
        self.crop_size = tuple(crop_size)
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.flip_probability = flip_probability

    def __call__(self, image: torch.Tensor, masks: torch.Tensor) -> Transformed:
        image, masks = random_flip(image, masks, self.flip_probability)
        height, width = image.shape[-2:]
        jitter = self.min_scale + (self.max_scale - self.min_scale) * float(torch.rand(()))
        scale = jitter * min(self.crop_size[0] / height, self.crop_size[1] / width)
        image, masks = resize(image, masks, (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))))
        image, masks = random_crop(image, masks, self.crop_size)
        size = (image.shape[-2], image.shape[-1])
        return pad_bottom_right(image, self.crop_size), pad_bottom_right(masks, self.crop_size), size
