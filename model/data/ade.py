"""The ADE-style semantic format: images with single-channel masks whose pixel value is the category id.

Value 0 is ignore; a value v > 0 is label-map category v. The image/mask pairs come from a JSON-lines
file (`annot_file`, relative to `root_dir`) of {"img": path, "segm": path} (paths relative to root_dir),
or, without one, from root_dir/images/ and root_dir/masks/ paired by file stem (masks are PNGs).
Semantic data has no instances: each class present is one segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.data.dataset import ImageRecord
from model.data.files import read_jsonl, read_label_png
from model.data.label_map import LabelMap
from model.data.targets import Annotation
from model.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _pairs_from_jsonl(annot_file: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(read_jsonl(annot_file), start=1):
        if not (isinstance(line, dict) and isinstance(line.get("img"), str) and isinstance(line.get("segm"), str)):
            raise UserError(f"{annot_file}, line {number}: expected {{\"img\": path, \"segm\": path}}, got {line!r}")
        pairs.append((line["img"], line["segm"]))
    return pairs


def _pairs_from_folders(root_dir: Path) -> list[tuple[str, str]]:
    image_dir, mask_dir = root_dir / "images", root_dir / "masks"
    if not (image_dir.is_dir() and mask_dir.is_dir()):
        raise UserError(
            f"{root_dir}: expected the folders images/ and masks/ (or an annot_file of {{\"img\", \"segm\"}} lines)"
        )
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    if images.keys() != masks.keys():
        unmatched = sorted(images.keys() ^ masks.keys())
        raise UserError(f"{root_dir}: images/ and masks/ must hold the same file stems; unmatched: {unmatched[:10]}")
    return [(str(images[s].relative_to(root_dir)), str(masks[s].relative_to(root_dir))) for s in sorted(images)]


class AdeReader:
    """Image/mask pairs under root_dir (see the module docstring), checked to exist when built."""

    def __init__(self, root_dir: Path, annot_file: str, label_map: LabelMap) -> None:
        if not root_dir.is_dir():
            raise UserError(f"{root_dir}: the ade root_dir is not a folder")
        pairs = _pairs_from_jsonl(root_dir / annot_file) if annot_file else _pairs_from_folders(root_dir)
        if not pairs:
            raise UserError(f"{root_dir / annot_file if annot_file else root_dir}: no images; a dataset needs at least one")
        self.label_map = label_map
        self.images = []
        self._mask_paths = []
        for image_id, (image_name, mask_name) in enumerate(pairs):
            image_path, mask_path = root_dir / image_name, root_dir / mask_name
            for kind, name, path in (("image", image_name, image_path), ("mask", mask_name, mask_path)):
                if not path.is_file():
                    raise UserError(f"{kind} file {path} not found (listed as {name!r} under {root_dir})")
            self.images.append(ImageRecord(image_id=image_id, file_name=image_name, path=image_path))
            self._mask_paths.append(mask_path)

    def label_file(self, index: int) -> Path:
        return self._mask_paths[index]

    def read_annotation(self, index: int, image_size: tuple[int, int]) -> Annotation:
        mask_path = self._mask_paths[index]
        values = read_label_png(mask_path, expect_rgb=False)
        if values.shape != tuple(image_size):
            raise UserError(
                f"{mask_path}: mask is {values.shape[0]}x{values.shape[1]} (HxW) but its image "
                f"{self.images[index].path} is {image_size[0]}x{image_size[1]}; expected the same size"
            )
        category_ids = np.flatnonzero(np.bincount(values.ravel()))  # the values present, sorted
        category_ids = category_ids[category_ids != 0]
        labels = self.label_map.train_ids(category_ids, str(mask_path))
        return Annotation(
            masks=values[None] == category_ids[:, None, None],
            labels=labels,
            iscrowd=np.zeros(len(labels), bool),
            isthing=self.label_map.things(labels),
            segment_ids=category_ids,
            has_instances=False,
        )
