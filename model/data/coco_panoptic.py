"""The COCO panoptic format: images, one RGB PNG of segment ids per image, and a JSON of the segments.

PNG colour -> segment id = R + 256 G + 256^2 B (0 and ids that `segments_info` does not list are void).
Each `segments_info` entry gives the segment's `id`, `category_id` and `iscrowd`. Thing segments are
the instances; crowd segments are never training targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.coco_json import field, read_images
from model.data.files import read_json, read_label_png
from model.data.label_map import LabelMap
from model.data.targets import Annotation
from model.errors import UserError
from model.metrics.panoptic import rgb_to_id


@dataclass(frozen=True)
class _ImageSegments:
    png: Path
    segment_ids: np.ndarray  # (S,) int64
    labels: np.ndarray  # (S,) int64 train ids
    iscrowd: np.ndarray  # (S,) bool


class CocoPanopticReader:
    """The images of `panoptic_json` under img_dir with their PNGs under panoptic_dir, checked when built."""

    def __init__(self, img_dir: Path, panoptic_json: Path, panoptic_dir: Path, label_map: LabelMap) -> None:
        data = read_json(panoptic_json)
        self.label_map = label_map
        self.images = read_images(data, panoptic_json, img_dir)
        by_image: dict[int, _ImageSegments] = {}
        for position, entry in enumerate(field(data, "annotations", list, str(panoptic_json))):
            where = f"{panoptic_json}: annotations[{position}]"
            image_id = field(entry, "image_id", int, where)
            if image_id in by_image:
                raise UserError(f"{where}: image id {image_id} has a second annotation")
            by_image[image_id] = self._parse_annotation(entry, where, panoptic_dir)
        known_ids = {record.image_id for record in self.images}
        unknown = sorted(set(by_image) - known_ids)
        if unknown:
            raise UserError(f"{panoptic_json}: annotations refer to image ids {unknown[:10]} that 'images' does not list")
        missing = [record.file_name for record in self.images if record.image_id not in by_image]
        if missing:
            raise UserError(f"{panoptic_json}: images {missing[:10]} have no entry in 'annotations'")
        self._segments = [by_image[record.image_id] for record in self.images]

    def _parse_annotation(self, entry: dict, where: str, panoptic_dir: Path) -> _ImageSegments:
        png = panoptic_dir / field(entry, "file_name", str, where)
        if not png.is_file():
            raise UserError(f"{where}: panoptic PNG {png} not found")
        segments = field(entry, "segments_info", list, where)
        ids, categories, crowd = [], [], []
        for k, segment in enumerate(segments):
            segment_where = f"{where}.segments_info[{k}]"
            ids.append(field(segment, "id", int, segment_where))
            categories.append(field(segment, "category_id", int, segment_where))
            iscrowd = segment.get("iscrowd", 0)
            if iscrowd not in (0, 1):
                raise UserError(f"{segment_where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
            crowd.append(bool(iscrowd))
        if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
            raise UserError(f"{where}: segment ids {ids} must be distinct and positive")
        return _ImageSegments(
            png=png,
            segment_ids=np.array(ids, np.int64),
            labels=self.label_map.train_ids(np.array(categories, np.int64), where),
            iscrowd=np.array(crowd, bool),
        )

    def label_file(self, index: int) -> Path:
        return self._segments[index].png

    def read_annotation(self, index: int, image_size: tuple[int, int]) -> Annotation:
        segments = self._segments[index]
        rgb = read_label_png(segments.png, expect_rgb=True)
        if rgb.shape[:2] != tuple(image_size):
            raise UserError(
                f"{segments.png}: panoptic PNG is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but its image "
                f"{self.images[index].path} is {image_size[0]}x{image_size[1]}; expected the same size"
            )
        masks = rgb_to_id(rgb)[None] == segments.segment_ids[:, None, None]
        absent = segments.segment_ids[~masks.any((1, 2))]
        if absent.size:
            raise UserError(
                f"{segments.png}: segments_info lists segment ids {absent.tolist()} that the PNG does not contain "
                f"(image {self.images[index].file_name})"
            )
        return Annotation(
            masks=masks,
            labels=segments.labels,
            iscrowd=segments.iscrowd,
            isthing=self.label_map.things(segments.labels),
            segment_ids=segments.segment_ids,
            has_instances=True,
        )
