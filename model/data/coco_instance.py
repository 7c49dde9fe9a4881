"""The COCO instance format: images and one JSON of object annotations (polygons or RLE masks).

Each annotation gives `image_id`, `category_id`, `segmentation` (a list of polygons, an uncompressed
RLE with a list of counts, or a compressed RLE with a string) and `iscrowd`. Crowd annotations are kept
as ignore regions: never training targets, 255 in the semantic ground truth. Where masks overlap, later
annotations lie on top in the semantic and panoptic ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from model.data.coco_json import field, read_images
from model.data.files import read_json
from model.data.label_map import LabelMap
from model.data.targets import Annotation
from model.errors import UserError


@dataclass(frozen=True)
class _ObjectAnnotation:
    segmentation: list | dict
    label: int  # train id
    iscrowd: bool
    position: int  # in the JSON's 'annotations', for messages


def _check_segmentation(segmentation: Any, where: str) -> None:
    """Raise a UserError unless `segmentation` has one of the three COCO shapes."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) % 2 == 0 and all(isinstance(v, (int, float)) for v in polygon)):
                raise UserError(f"{where}: each polygon of 'segmentation' must be a flat list [x1, y1, x2, y2, ...]")
        return
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if isinstance(size, list) and len(size) == 2 and isinstance(counts, (list, str)):
            return
    raise UserError(
        f"{where}: 'segmentation' must be a list of polygons or an RLE {{'size': [h, w], 'counts': ...}}, "
        f"got {type(segmentation).__name__}"
    )


def _rle(annotation: _ObjectAnnotation, height: int, width: int, where: str) -> dict[str, Any]:
    """The annotation's mask as one compressed RLE of an image height x width."""
    segmentation = annotation.segmentation
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # fewer than 3 points enclose nothing
        if not polygons:
            return mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if list(segmentation["size"]) != [height, width]:
        raise UserError(
            f"{where}: RLE size {segmentation['size']} differs from the image size [{height}, {width}]"
        )
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


class CocoInstanceReader:
    """The images of `instance_json` under img_dir with their object masks, checked when built."""

    def __init__(self, img_dir: Path, instance_json: Path, label_map: LabelMap) -> None:
        data = read_json(instance_json)
        self.label_map = label_map
        self.images = read_images(data, instance_json, img_dir)
        self._json = instance_json
        self._sizes = [(entry.get("height"), entry.get("width")) for entry in data["images"]]
        position_of = {record.image_id: i for i, record in enumerate(self.images)}
        entries = field(data, "annotations", list, str(instance_json))
        for position, entry in enumerate(entries):
            where = f"{instance_json}: annotations[{position}]"
            if field(entry, "image_id", int, where) not in position_of:
                raise UserError(f"{where}: image id {entry['image_id']} is not in 'images'")
            field(entry, "category_id", int, where)
            if "segmentation" not in entry:
                raise UserError(f"{where}: no 'segmentation'; mask training needs a polygon or RLE mask per object")
            _check_segmentation(entry["segmentation"], where)
            if entry.get("iscrowd", 0) not in (0, 1):
                raise UserError(f"{where}: 'iscrowd' must be 0 or 1, got {entry['iscrowd']!r}")
        labels = label_map.train_ids(np.array([entry["category_id"] for entry in entries], np.int64), str(instance_json))
        self._objects: list[list[_ObjectAnnotation]] = [[] for _ in self.images]
        for position, (entry, label) in enumerate(zip(entries, labels.tolist())):
            self._objects[position_of[entry["image_id"]]].append(
                _ObjectAnnotation(entry["segmentation"], label, bool(entry.get("iscrowd", 0)), position)
            )

    def label_file(self, index: int) -> None:
        return None

    def read_annotation(self, index: int, image_size: tuple[int, int]) -> Annotation:
        height, width = image_size
        declared = self._sizes[index]
        if None not in declared and tuple(declared) != (height, width):
            raise UserError(
                f"image {self.images[index].path} is {height}x{width} (HxW) but the instance JSON declares "
                f"height {declared[0]}, width {declared[1]}; expected the same size"
            )
        objects = self._objects[index]
        try:
            rles = [_rle(a, height, width, f"{self._json}: annotations[{a.position}]") for a in objects]
            masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool) if rles else np.zeros((0, height, width), bool)
        except ValueError as e:
            raise UserError(f"image {self.images[index].file_name}: an annotation has an invalid RLE ({e})") from None
        labels = np.array([annotation.label for annotation in objects], np.int64)
        return Annotation(
            masks=masks,
            labels=labels,
            iscrowd=np.array([annotation.iscrowd for annotation in objects], bool),
            isthing=self.label_map.things(labels),
            segment_ids=np.arange(1, len(objects) + 1, dtype=np.int64),
            has_instances=True,
        )
