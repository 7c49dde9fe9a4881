"""COCO mask AP through pycocotools; expected values worked out by hand."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from model.errors import UserError
from model.metrics import MaskAP, ap_from_coco_files


def square(top: int, left: int, size: int = 10, shape: tuple[int, int] = (24, 24)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def stack(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, 24, 24), bool)


def test_perfect_prediction_has_ap_100():
    metric = MaskAP()
    metric.update(stack(square(0, 0), square(12, 12)), [0.9, 0.8], [1, 2], stack(square(0, 0), square(12, 12)), [1, 2])
    result = metric.compute()
    for name in ("AP", "AP50", "AP75", "APs", "AP/1", "AP/2"):
        assert result[name] == pytest.approx(100.0)
    # both objects are 100 pixels, "small" (< 32^2): medium and large have no gt, so COCO leaves them undefined
    assert np.isnan(result["APm"]) and np.isnan(result["APl"])


def test_prediction_with_iou_two_thirds_matches_up_to_threshold_0_65():
    # gt: 10 x 10 square; prediction: the same square shifted 2 columns right.
    # intersection 10 x 8 = 80, union 100 + 100 - 80 = 120, IoU = 2/3.
    # Thresholds 0.50, 0.55, 0.60, 0.65 (<= 2/3) match: precision 1 at every recall -> AP 100 there;
    # 0.70 ... 0.95 do not: AP 0. AP = 4 * 100 / 10 = 40, AP50 = 100, AP75 = 0.
    metric = MaskAP()
    metric.update(stack(square(0, 2)), [0.9], [1], stack(square(0, 0)), [1])
    result = metric.compute()
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == 0.0
    assert result["AP"] == pytest.approx(40.0)


def test_no_predictions_give_ap_0():
    metric = MaskAP()
    metric.update(stack(), [], [], stack(square(0, 0)), [1])
    result = metric.compute()
    assert result["AP"] == 0.0 and result["AP50"] == 0.0 and result["AP/1"] == 0.0


def test_nothing_accumulated_gives_nan_not_a_crash():
    assert np.isnan(MaskAP().compute()["AP"])


def test_missed_class_halves_the_mean_and_unseen_category_is_nan():
    # Class 1 found exactly (AP 100), class 2 missed (AP 0): AP = 50. Category 3 has no gt: NaN, not averaged.
    metric = MaskAP(category_ids={1: "cat", 2: "dog", 3: "bird"})
    metric.update(stack(square(0, 0)), [0.9], [1], stack(square(0, 0), square(12, 12)), [1, 2])
    result = metric.compute()
    assert (result["AP/1"], result["AP/2"], result["AP"]) == pytest.approx((100.0, 0.0, 50.0))
    assert np.isnan(result["AP/3"])


def test_prediction_inside_a_crowd_region_is_not_a_false_positive():
    # gt: object A (10 x 10) and a 12 x 12 crowd region. A higher-scored prediction lies inside the crowd
    # region (IoU against a crowd region is intersection / prediction area = 1): it is ignored, and A is
    # found exactly: AP 100. Were the region an ordinary object, that prediction's IoU would be
    # 100 / 144 < 0.7: a false positive from threshold 0.70 on, so AP < 100.
    def ap(iscrowd: bool) -> float:
        metric = MaskAP()
        metric.update(
            stack(square(12, 12), square(0, 0)),
            [0.95, 0.9],
            [1, 1],
            stack(square(0, 0), square(12, 12, size=12)),
            [1, 1],
            gt_iscrowd=[False, iscrowd],
        )
        return metric.compute()["AP"]

    assert ap(iscrowd=True) == pytest.approx(100.0)
    assert ap(iscrowd=False) < 99.0


def test_merge_and_state_concatenate_images():
    whole, first, second = MaskAP(), MaskAP(), MaskAP()
    images = [
        (stack(square(0, 2)), [0.9], [1], stack(square(0, 0)), [1]),
        (stack(square(0, 0), square(5, 5)), [0.8, 0.7], [1, 1], stack(square(0, 0)), [1]),
    ]
    for index, image in enumerate(images):
        whole.update(*image)
        (first if index == 0 else second).update(*image)
    first.merge(second)
    assert first.compute() == pytest.approx(whole.compute(), nan_ok=True)
    gathered = MaskAP()
    gathered.load_state(first.state()[:1] + second.state())
    assert gathered.compute() == pytest.approx(whole.compute(), nan_ok=True)


def test_unknown_category_is_a_user_error():
    with pytest.raises(UserError, match=r"category ids \[5\]"):
        MaskAP(category_ids=[1]).update(stack(square(0, 0)), [0.9], [5], stack(square(0, 0)), [1])


def rle_json(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_coco_json_files_score_like_the_streamed_metric(tmp_path):
    gt = {
        "images": [{"id": 7, "height": 24, "width": 24, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": rle_json(square(0, 0)), "area": 100.0,
             "bbox": [0, 0, 10, 10], "iscrowd": 0}
        ],
    }
    results = [{"image_id": 7, "category_id": 1, "segmentation": rle_json(square(0, 2)), "score": 0.9}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert ap_from_coco_files(tmp_path / "gt.json", tmp_path / "results.json")["AP"] == pytest.approx(40.0)

    (tmp_path / "results.json").write_text("[]")
    assert ap_from_coco_files(tmp_path / "gt.json", tmp_path / "results.json")["AP"] == 0.0

    (tmp_path / "results.json").write_text(json.dumps([{**results[0], "image_id": 8}]))
    with pytest.raises(UserError, match="image_id 8"):
        ap_from_coco_files(tmp_path / "gt.json", tmp_path / "results.json")
