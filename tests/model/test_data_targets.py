"""Training targets per task and evaluation ground truth, from a hand-built 4x4 annotation."""

import numpy as np
import pytest

from model.data.targets import Annotation, ground_truth, training_targets
from model.errors import UserError
from model.tasks import check_task


def _annotation(has_instances: bool = True) -> Annotation:
    """Four segments on a 4x4 image: stuff 'sky' (train id 3) on the top rows, two things of class 0 and a
    crowd thing of class 1; the second thing overlaps the first at pixel (2, 1) and lies on top there."""
    sky = np.zeros((4, 4), bool)
    sky[:2] = True
    first = np.zeros((4, 4), bool)
    first[2:, :2] = True
    second = np.zeros((4, 4), bool)
    second[2, 1:3] = True
    crowd = np.zeros((4, 4), bool)
    crowd[3, 3] = True
    return Annotation(
        masks=np.stack([sky, first, second, crowd]),
        labels=np.array([3, 0, 0, 1]),
        iscrowd=np.array([False, False, False, True]),
        isthing=np.array([False, True, True, True]),
        segment_ids=np.array([10, 20, 21, 30]),
        has_instances=has_instances,
    )


def test_panoptic_targets_are_every_segment_but_crowd():
    masks, labels = training_targets(_annotation(), "panoptic")
    assert labels.tolist() == [3, 0, 0]
    assert masks.dtype == bool and masks.shape == (3, 4, 4)
    assert not masks[:, 3, 3].any()  # the crowd pixel is no target


def test_instance_targets_are_the_things_only():
    masks, labels = training_targets(_annotation(), "instance")
    assert labels.tolist() == [0, 0]
    assert masks.sum((1, 2)).tolist() == [4, 2]


def test_semantic_targets_are_one_mask_per_class_present():
    masks, labels = training_targets(_annotation(), "semantic")
    assert labels.tolist() == [0, 3]
    assert masks[0].sum() == 5  # the union of both class-0 things
    assert masks[1].sum() == 8


def test_ground_truth_paints_later_segments_on_top_and_crowd_as_ignore():
    truth = ground_truth(_annotation())
    assert truth["semantic"].dtype == np.int64
    assert truth["semantic"].tolist() == [[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 0, 255], [0, 0, 255, 255]]
    assert truth["panoptic"].dtype == np.int32
    assert truth["panoptic"].tolist() == [[10, 10, 10, 10], [10, 10, 10, 10], [20, 21, 21, 0], [20, 20, 0, 30]]
    assert truth["segments"][3] == {"id": 30, "category_id": 1, "iscrowd": 1, "isthing": True}
    assert truth["instances"]["labels"].tolist() == [0, 0, 1]
    assert truth["instances"]["iscrowd"].tolist() == [False, False, True]
    assert truth["instances"]["masks"].shape == (3, 4, 4)


def test_semantic_data_has_no_panoptic_or_instance_ground_truth():
    assert set(ground_truth(_annotation(has_instances=False))) == {"semantic"}


def test_an_unknown_task_is_a_user_error_naming_the_argument():
    with pytest.raises(UserError, match="^task: 'detection'; expected one of"):
        check_task("detection")
