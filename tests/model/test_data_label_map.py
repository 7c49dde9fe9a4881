"""The label map: id -> train id with and without contiguous ids, and the num_classes check."""

import json

import numpy as np
import pytest

from model.data.label_map import LabelMap
from model.errors import UserError

# Deliberately unsorted, with gaps in the ids and one category without a colour.
CATEGORIES = [
    {"id": 7, "name": "wall", "isthing": 0, "color": [1, 2, 3]},
    {"id": 1, "name": "circle", "isthing": 1, "color": [4, 5, 6]},
    {"id": 3, "name": "triangle", "isthing": 1},
]


def test_contiguous_ids_become_train_ids_in_id_order():
    label_map = LabelMap(CATEGORIES, contiguous_id=True)
    assert label_map.id_to_train_id == {1: 0, 3: 1, 7: 2}
    assert label_map.train_id_to_id == {0: 1, 1: 3, 2: 7}
    assert label_map.names == {0: "circle", 1: "triangle", 2: "wall"}
    assert label_map.isthing == {0: True, 1: True, 2: False}
    assert label_map.colors[0] == (4, 5, 6) and len(label_map.colors[1]) == 3
    assert label_map.num_classes == 3
    assert label_map.train_ids(np.array([[7, 1], [3, 3]]), "x").tolist() == [[2, 0], [1, 1]]


def test_without_contiguous_ids_the_raw_ids_are_the_train_ids():
    label_map = LabelMap(CATEGORIES, contiguous_id=False)
    assert label_map.id_to_train_id == {1: 1, 3: 3, 7: 7}
    assert label_map.names[7] == "wall"
    assert label_map.num_classes == 8
    assert label_map.is_thing_per_class(8) == [False, True, False, True, False, False, False, False]


def test_contiguous_num_classes_must_equal_the_number_of_categories():
    label_map = LabelMap(CATEGORIES, contiguous_id=True)
    label_map.check_num_classes(3)
    with pytest.raises(UserError, match=r"model\.sem_seg_head\.num_classes is 4.*expected 3"):
        label_map.check_num_classes(4)


def test_raw_id_num_classes_must_exceed_the_largest_id():
    label_map = LabelMap(CATEGORIES, contiguous_id=False)
    label_map.check_num_classes(8)
    label_map.check_num_classes(200)
    with pytest.raises(UserError, match=r"num_classes is 7.*category id 7.*expected at least 8"):
        label_map.check_num_classes(7)


def test_an_id_not_in_the_label_map_names_the_file_and_the_id():
    label_map = LabelMap(CATEGORIES, contiguous_id=True)
    with pytest.raises(UserError, match=r"masks/a\.png: category ids \[2, 9\] are not in the label map"):
        label_map.train_ids(np.array([1, 2, 9, 2]), "masks/a.png")


def test_loads_the_coco_panoptic_categories_file(tmp_path):
    path = tmp_path / "label_map.json"
    path.write_text(json.dumps(CATEGORIES))
    assert LabelMap.from_file(path, contiguous_id=True).names[2] == "wall"


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{\"id\": 1, \"name\": \"a\"", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ("{\"id\": 1}", "non-empty JSON list"),
        ("[{\"id\": 1, \"name\": \"a\"}, {\"id\": 1, \"name\": \"b\"}]", r"ids \[1\] appear more than once"),
        ("[{\"id\": \"1\", \"name\": \"a\"}]", "'id' must be a non-negative integer"),
        ("[{\"id\": 1}]", "'name' must be a non-empty string"),
        ("[{\"id\": 1, \"name\": \"a\", \"isthing\": 2}]", "'isthing' must be 0 or 1"),
        ("[{\"id\": 1, \"name\": \"a\", \"color\": [0, 0]}]", "'color' must be"),
    ],
)
def test_a_malformed_label_map_is_a_user_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "label_map.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        LabelMap.from_file(path, contiguous_id=True)
    assert str(path) in str(error.value)


def test_a_raw_id_that_collides_with_the_ignore_label_is_refused():
    with pytest.raises(UserError, match="collides with the ignore label 255"):
        LabelMap([{"id": 255, "name": "x"}], contiguous_id=False)
    assert LabelMap([{"id": 255, "name": "x"}], contiguous_id=True).id_to_train_id == {255: 0}
