"""Batches: the collate that pads items to a common size, and the DataLoader factory.

Batch (`collate(items)`):
    images       (B, 3, Hp, Wp) uint8; Hp, Wp = the batch's largest h, w rounded up to a multiple of 32,
                 each image padded with zeros at the bottom / right
    targets      list of B {labels (N,) int64, masks (N, Hp, Wp) bool}, masks padded like the images
    image_sizes  [(h, w)] content size of each image (before padding), orig_sizes [(H0, W0)]
    image_ids, file_names, indices
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from model.data.transforms import pad_bottom_right

SIZE_DIVISIBILITY = 32  # the coarsest feature stride of the backbone


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into one batch (see the module docstring)."""
    height = max(item["image"].shape[-2] for item in items)
    width = max(item["image"].shape[-1] for item in items)
    padded = (math.ceil(height / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY, math.ceil(width / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY)
    return {
        "images": torch.stack([pad_bottom_right(item["image"], padded) for item in items]),
        "targets": [{"labels": item["labels"], "masks": pad_bottom_right(item["masks"], padded)} for item in items],
        "image_sizes": [item["size"] for item in items],
        "orig_sizes": [item["orig_size"] for item in items],
        "image_ids": [item["image_id"] for item in items],
        "file_names": [item["file_name"] for item in items],
        "indices": [item["index"] for item in items],
    }


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    drop_last: bool = False,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of padded batches; `seed` fixes the shuffling order and the workers' augmentation draws.

    Keep drop_last False for evaluation so that every image is scored.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
