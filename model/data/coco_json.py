"""Checks of COCO-style annotation JSON shared by the instance and the panoptic format.

They run when a dataset is built, so a malformed file fails before any training with the file, the
entry and the field that is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.data.dataset import ImageRecord
from model.errors import UserError

_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


def field(entry: Any, key: str, kind: type, where: str) -> Any:
    """entry[key], which must exist and be of `kind` (bool is not an integer); a UserError naming `where` otherwise."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object, got {type(entry).__name__}")
    value = entry.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: '{key}' must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")
    return value


def read_images(data: Any, json_path: Path, img_dir: Path) -> list[ImageRecord]:
    """The `images` list of a COCO JSON as records, each checked to exist under img_dir; at least one image."""
    if not isinstance(data, dict):
        raise UserError(f"{json_path}: expected a COCO JSON object with 'images' and 'annotations', got {type(data).__name__}")
    entries = field(data, "images", list, str(json_path))
    if not entries:
        raise UserError(f"{json_path}: 'images' is empty; a dataset needs at least one image")
    records, seen = [], set()
    for position, entry in enumerate(entries):
        where = f"{json_path}: images[{position}]"
        image_id = field(entry, "id", int, where)
        file_name = field(entry, "file_name", str, where)
        if image_id in seen:
            raise UserError(f"{where}: image id {image_id} appears more than once")
        seen.add(image_id)
        path = img_dir / file_name
        if not path.is_file():
            raise UserError(f"{where}: image file {path} not found (file_name {file_name!r} under img_dir {img_dir})")
        records.append(ImageRecord(image_id=image_id, file_name=file_name, path=path))
    return records

