"""The label map: a dataset's categories and how their ids become the model's class indices (train ids).

The file is a JSON list of {"id", "name", "isthing", "color"} (the COCO panoptic categories format).
With `contiguous_id` the ids, sorted, become train ids 0..N-1 and the model needs exactly N classes;
without it every id is its own train id and the model needs more classes than the largest id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.data.files import read_json
from model.errors import UserError

IGNORE_LABEL = 255  # the train id of pixels that no loss and no metric counts
NUM_CLASSES_KEY = "model.sem_seg_head.num_classes"


def _default_color(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour for a category that the label map gives none."""
    return ((category_id * 97 + 53) % 256, (category_id * 59 + 151) % 256, (category_id * 173 + 29) % 256)


def _parse_category(entry: Any, position: int, source: str) -> tuple[int, str, bool, tuple[int, int, int]]:
    where = f"{source}: entry {position}"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object {{id, name, isthing, color}}, got {type(entry).__name__}")
    category_id, name = entry.get("id"), entry.get("name")
    if isinstance(category_id, bool) or not isinstance(category_id, int) or category_id < 0:
        raise UserError(f"{where}: 'id' must be a non-negative integer, got {category_id!r}")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where} (id {category_id}): 'name' must be a non-empty string, got {name!r}")
    isthing = entry.get("isthing", 1)
    if isthing not in (0, 1):  # True and False compare equal to 1 and 0
        raise UserError(f"{where} (id {category_id}): 'isthing' must be 0 or 1, got {isthing!r}")
    color = entry.get("color", _default_color(category_id))
    if not (
        isinstance(color, (list, tuple))
        and len(color) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        raise UserError(f"{where} (id {category_id}): 'color' must be [R, G, B] integers in 0..255, got {color!r}")
    return category_id, name, bool(isthing), (color[0], color[1], color[2])


class LabelMap:
    """Categories of a dataset keyed by train id, and the id <-> train id maps.

    ids: the raw category ids, sorted. id_to_train_id / train_id_to_id: the two maps.
    names, isthing, colors: dicts keyed by train id.
    """

    def __init__(self, categories: list[dict[str, Any]], contiguous_id: bool, source: str = "label map") -> None:
        if not isinstance(categories, list) or not categories:
            raise UserError(f"{source}: expected a non-empty JSON list of {{id, name, isthing, color}} categories")
        parsed = sorted(_parse_category(entry, i, source) for i, entry in enumerate(categories))
        ids = [category_id for category_id, *_ in parsed]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise UserError(f"{source}: category ids {duplicates} appear more than once")
        self.source = source
        self.contiguous_id = contiguous_id
        self.ids = ids
        self.id_to_train_id = {category_id: (i if contiguous_id else category_id) for i, category_id in enumerate(ids)}
        self.train_id_to_id = {train_id: category_id for category_id, train_id in self.id_to_train_id.items()}
        largest = max(self.train_id_to_id)
        if largest >= IGNORE_LABEL:
            raise UserError(
                f"{source}: train id {largest} collides with the ignore label {IGNORE_LABEL}; "
                f"expected ids below {IGNORE_LABEL} (or dataset.contiguous_id: true with fewer than {IGNORE_LABEL} categories)"
            )
        self.names = {self.id_to_train_id[i]: name for i, name, _, _ in parsed}
        self.isthing = {self.id_to_train_id[i]: isthing for i, _, isthing, _ in parsed}
        self.colors = {self.id_to_train_id[i]: color for i, _, _, color in parsed}
        self._lookup = np.full(max(ids) + 1, -1, np.int64)  # raw id -> train id, -1 where no category
        self._lookup[ids] = [self.id_to_train_id[i] for i in ids]

    @classmethod
    def from_file(cls, path: str | Path, contiguous_id: bool) -> LabelMap:
        """Load the label map JSON at `path`."""
        return cls(read_json(path), contiguous_id, source=str(path))

    @property
    def num_classes(self) -> int:
        """The number of classes the model needs: N categories, or largest id + 1 without contiguous ids."""
        return len(self.ids) if self.contiguous_id else max(self.ids) + 1

    def check_num_classes(self, num_classes: int) -> None:
        """Raise a UserError when the model's class count does not fit this label map."""
        if self.contiguous_id and num_classes != self.num_classes:
            raise UserError(
                f"{NUM_CLASSES_KEY} is {num_classes}, but the label map {self.source} has {len(self.ids)} categories "
                f"and dataset.contiguous_id is true: expected {self.num_classes}"
            )
        if not self.contiguous_id and num_classes < self.num_classes:
            raise UserError(
                f"{NUM_CLASSES_KEY} is {num_classes}, but the label map {self.source} has category id {max(self.ids)} "
                f"and dataset.contiguous_id is false (ids are the class indices): expected at least {self.num_classes}"
            )

    def is_thing_per_class(self, num_classes: int) -> list[bool]:
        """For each class index 0..num_classes-1 whether it is a thing (False for indices no category uses)."""
        return [self.isthing.get(train_id, False) for train_id in range(num_classes)]

    def things(self, train_ids: np.ndarray) -> np.ndarray:
        """Whether each train id (N,) is a thing class: (N,) bool."""
        return np.array([self.isthing[t] for t in np.asarray(train_ids).tolist()], bool)

    def train_ids(self, category_ids: np.ndarray, where: str) -> np.ndarray:
        """Raw category ids (any shape) -> train ids, int64; a UserError naming `where` for an id not in the map."""
        category_ids = np.asarray(category_ids, dtype=np.int64)
        known = (category_ids >= 0) & (category_ids < self._lookup.size)
        train_ids = np.where(known, self._lookup[np.where(known, category_ids, 0)], -1)
        unknown = train_ids < 0
        if unknown.any():
            raise UserError(
                f"{where}: category ids {np.unique(category_ids[unknown]).tolist()} are not in the label map "
                f"{self.source} ({len(self.ids)} categories, ids {self.ids[0]}..{self.ids[-1]})"
            )
        return train_ids
