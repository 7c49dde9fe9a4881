"""Unlabelled images of a folder as a dataset, for inference: the items of `model.data.dataset` without targets.

Every image (.jpg, .jpeg, .png, .bmp, .webp, any case) below the folder is taken, sub-folders included,
hidden files and folders (a name starting with '.', such as the '._x.jpg' files of macOS archives)
excluded, sorted by relative path. An image's `file_name` is its path relative to the folder; its
`image_id` is that path without the suffix, or the integer it spells for a top-level file named by digits
(COCO's `000000000139.jpg` is image 139), so predictions on a COCO image folder carry COCO's ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model.data.dataset import Transform
from model.data.files import read_rgb
from model.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(img_dir: Path) -> list[str]:
    """Relative POSIX paths of the images below `img_dir` (see the module docstring), sorted."""
    found = []
    for path in img_dir.rglob("*"):
        relative = path.relative_to(img_dir)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


def image_id_of(file_name: str) -> int | str:
    """The image id of a relative path: its digits as an integer for a top-level file named by digits, else the path without suffix."""
    stem = Path(file_name).with_suffix("").as_posix()
    return int(stem) if stem.isdigit() else stem


class ImageFolderDataset(Dataset):
    """The images of `img_dir` as items that `model.data.collate` batches.

    img_dir: a folder (resolve archives first with `model.data.resolve_dir`); transform: an evaluation
    transform of `model.data.transforms`, such as `ResizeShortestEdge`.
    Item: image (3, h, w) uint8 after the transform; labels (0,) int64 and masks (0, h, w) bool (no
    targets); image_id, file_name, orig_size (H0, W0), size (h, w), index.
    Raises UserError when the folder holds no image, or when two images would share an id.
    """

    def __init__(self, img_dir: str | Path, transform: Transform) -> None:
        self.img_dir = Path(img_dir)
        if not self.img_dir.is_dir():
            raise UserError(f"{self.img_dir}: image folder not found")
        self.file_names = list_images(self.img_dir)
        if not self.file_names:
            raise UserError(f"{self.img_dir}: no image found (expected {', '.join(IMAGE_SUFFIXES)} files)")
        self.image_ids = [image_id_of(name) for name in self.file_names]
        first_of_id: dict[int | str, str] = {}
        for name, image_id in zip(self.file_names, self.image_ids):
            if image_id in first_of_id:
                raise UserError(
                    f"{self.img_dir}: images {first_of_id[image_id]} and {name} would share the image id {image_id!r} "
                    "and their output files; rename one"
                )
            first_of_id[image_id] = name
        self.transform = transform

    def __len__(self) -> int:
        return len(self.file_names)

    def read_image(self, index: int) -> np.ndarray:
        """Image `index` as stored, (H0, W0, 3) uint8 RGB (EXIF rotation applied)."""
        return read_rgb(self.img_dir / self.file_names[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.read_image(index)
        orig_size = (image.shape[0], image.shape[1])
        no_masks = torch.zeros((0, *orig_size), dtype=torch.bool)
        image_t, masks_t, size = self.transform(torch.from_numpy(image).permute(2, 0, 1), no_masks)
        return {
            "image": image_t.contiguous(),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": masks_t,
            "image_id": self.image_ids[index],
            "file_name": self.file_names[index],
            "orig_size": orig_size,
            "size": size,
            "index": index,
        }
