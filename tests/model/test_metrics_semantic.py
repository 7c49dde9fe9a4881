"""Semantic metrics from the confusion matrix; expected values worked out by hand."""

import numpy as np
import pytest

from model.errors import UserError
from model.metrics import SemanticMetrics

# Two ignore pixels (255) whose predictions must not count. Pairs (gt, pred) of the 6 counted pixels:
# (0,0) (0,0) (0,1) (1,1) | (1,1) (2,0). Class 3 appears nowhere.
GT = np.array([[0, 0, 0, 1], [1, 2, 255, 255]])
PRED = np.array([[0, 0, 1, 1], [1, 0, 0, 2]])


def test_scores_of_a_hand_built_confusion_with_ignore_pixels():
    metric = SemanticMetrics(num_classes=4, ignore_index=255)
    metric.update(PRED, GT)
    # rows gt, columns pred
    assert metric.state().tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    result = metric.compute()
    # IoU: class 0 = 2 / (3 + 3 - 2) = 1/2, class 1 = 2 / (2 + 3 - 2) = 2/3, class 2 = 0 / 1 = 0,
    # class 3 = 0 / 0: undefined, left out of the mean.
    assert result["IoU/0"] == pytest.approx(50.0)
    assert result["IoU/1"] == pytest.approx(200 / 3)
    assert result["IoU/2"] == 0.0
    assert np.isnan(result["IoU/3"])
    # mIoU = (1/2 + 2/3 + 0) / 3 = 7/18
    assert result["mIoU"] == pytest.approx(100 * 7 / 18)
    # fwIoU weights by gt pixels (3, 2, 1 of 6): (3 * 1/2 + 2 * 2/3 + 1 * 0) / 6 = 17/36
    assert result["fwIoU"] == pytest.approx(100 * 17 / 36)
    # pACC = correct / counted = 4 / 6
    assert result["pACC"] == pytest.approx(100 * 4 / 6)
    # mACC over the classes in gt: (2/3 + 2/2 + 0/1) / 3 = 5/9
    assert result["mACC"] == pytest.approx(100 * 5 / 9)


def test_a_class_only_predicted_counts_in_miou_with_zero():
    # gt all class 0; prediction half class 1. IoU 0 = 2/4, IoU 1 = 0 / 2 = 0: mIoU = 25;
    # class 1 is not in gt, so mACC = accuracy of class 0 = 50.
    metric = SemanticMetrics(num_classes=2)
    metric.update(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]))
    result = metric.compute()
    assert (result["mIoU"], result["mACC"], result["pACC"]) == pytest.approx((25.0, 50.0, 50.0))


def test_merge_and_state_add_up_like_one_pass():
    rng = np.random.default_rng(0)
    pairs = [
        (rng.integers(0, 5, (8, 8)), np.where(rng.random((8, 8)) < 0.1, 255, rng.integers(0, 5, (8, 8))))
        for _ in range(6)
    ]
    whole, first, second = (SemanticMetrics(5) for _ in range(3))
    for index, (pred, gt) in enumerate(pairs):
        whole.update(pred, gt)
        (first if index % 2 else second).update(pred, gt)
    first.merge(second)
    np.testing.assert_array_equal(first.state(), whole.state())
    summed = SemanticMetrics(5)
    summed.load_state(first.state())
    assert summed.compute() == pytest.approx(whole.compute(), nan_ok=True)


def test_label_outside_the_classes_is_a_user_error():
    metric = SemanticMetrics(num_classes=3)
    with pytest.raises(UserError, match=r"ground truth holds class ids \[7\]"):
        metric.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(UserError, match=r"prediction holds class ids \[3\]"):
        metric.update(np.array([0, 3]), np.array([0, 1]))


def test_no_counted_pixel_gives_nan():
    metric = SemanticMetrics(num_classes=2)
    metric.update(np.array([0, 1]), np.array([255, 255]))
    assert np.isnan(metric.compute()["mIoU"]) and np.isnan(metric.compute()["pACC"])
