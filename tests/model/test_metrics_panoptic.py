"""Panoptic quality follows the COCO panoptic API's rules; every expected value is worked out by hand."""

import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from model.errors import UserError
from model.metrics import PanopticQuality, id_to_rgb, pq_from_coco_files, rgb_to_id


def row(*ids: int) -> np.ndarray:
    """A 1 x W id map: each pixel of the image written out."""
    return np.array([ids])


def segs(*pairs: tuple[int, int], crowd: tuple[int, ...] = ()) -> list[dict]:
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in pairs]


def test_perfect_prediction_scores_100():
    ids = row(1, 1, 1, 2, 2, 2, 0)
    metric = PanopticQuality({1: True, 2: False})
    metric.update(ids, segs((1, 1), (2, 2)), ids, segs((1, 1), (2, 2)))
    result = metric.compute()
    for name in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ/1", "PQ/2"):
        assert result[name] == pytest.approx(100.0)


def test_match_with_iou_0_6_gives_sq_60_and_rq_100():
    # gt segment: 10 pixels; prediction: 6 of them, the other 4 predicted as nothing (id 0).
    # IoU = 6 / (10 + 6 - 6) = 0.6 > 0.5: a match. SQ = 60, RQ = 1 / (1 + 0 + 0) = 100, PQ = 60.
    metric = PanopticQuality({1: True})
    metric.update(row(5, 5, 5, 5, 5, 5, 0, 0, 0, 0), segs((5, 1)), row(*[1] * 10), segs((1, 1)))
    result = metric.compute()
    assert result["SQ"] == pytest.approx(60.0)
    assert result["RQ"] == pytest.approx(100.0)
    assert result["PQ"] == pytest.approx(60.0)


def test_iou_of_exactly_half_is_not_a_match():
    # gt segment: 10 pixels; prediction: 5 of them. IoU = 5 / 10 = 0.5, not > 0.5:
    # the gt is a FN, the prediction (none of it on void) a FP. PQ = SQ = RQ = 0.
    metric = PanopticQuality({1: True})
    metric.update(row(5, 5, 5, 5, 5, 0, 0, 0, 0, 0), segs((5, 1)), row(*[1] * 10), segs((1, 1)))
    assert metric.state().tolist() == [[0, 1, 1, 0]]  # tp, fp, fn, iou_sum
    assert metric.compute()["PQ"] == 0.0
    assert metric.compute()["RQ"] == 0.0


@pytest.mark.parametrize("void_id", [0, 7], ids=["id-0", "id-without-segment-info"])
def test_pred_pixels_on_void_leave_the_union(void_id):
    # gt: segment 1 on 6 pixels, then 4 void pixels. The prediction covers 4 pixels of the segment
    # and the 4 void ones. Union = 6 + 8 - 4 - 4 (void) = 6, IoU = 4 / 6: a match with SQ 66.7
    # (counting void, IoU would be 4 / 10 and no match).
    metric = PanopticQuality({1: True})
    gt = row(1, 1, 1, 1, 1, 1, void_id, void_id, void_id, void_id)
    metric.update(row(0, 0, 9, 9, 9, 9, 9, 9, 9, 9), segs((9, 1)), gt, segs((1, 1)))
    result = metric.compute()
    assert result["SQ"] == pytest.approx(100 * 4 / 6)
    assert result["RQ"] == pytest.approx(100.0)


@pytest.mark.parametrize("pred_class, class_1_fp, class_3_fp", [(1, 0, 0), (3, 0, 1)])
def test_pred_mostly_on_a_crowd_region_of_its_class_is_not_a_false_positive(pred_class, class_1_fp, class_3_fp):
    # gt: crowd segment 1 (class 1) on pixels 0-5, stuff segment 2 (class 2) on pixels 6-9.
    # pred 5 sits on crowd pixels 0-3 only (4/4 of it on crowd): ignored when it is class 1,
    # a FP when it is class 3 (the crowd belongs to class 1). pred 6 (class 2) on pixels 4-9 matches
    # segment 2 with IoU 4 / (4 + 6 - 4) = 2/3. The crowd segment is never a FN.
    metric = PanopticQuality({1: True, 2: False, 3: True})
    metric.update(
        row(5, 5, 5, 5, 6, 6, 6, 6, 6, 6),
        segs((5, pred_class), (6, 2)),
        row(1, 1, 1, 1, 1, 1, 2, 2, 2, 2),
        segs((1, 1), (2, 2), crowd=(1,)),
    )
    tp, fp, fn, iou_sum = metric.state().T
    assert tp.tolist() == [0, 1, 0]
    assert fp.tolist() == [class_1_fp, 0, class_3_fp]
    assert fn.tolist() == [0, 0, 0]
    assert iou_sum[1] == pytest.approx(2 / 3)


def test_unmatched_pred_is_a_false_positive_and_unmatched_gt_a_false_negative():
    # gt: thing segments 1 (pixels 0-3) and 2 (4-7) of class 1, stuff segment 3 (8-11) of class 2.
    # pred 10 (class 1) = segment 1 exactly: TP with IoU 1; pred 11 (class 1) lies on stuff: FP of class 1;
    # segment 2 is missed: FN of class 1; segment 3 gets no class-2 prediction: FN of class 2.
    # Class 1: RQ = 1 / (1 + 1/2 + 1/2) = 50, SQ = 100, PQ = 50. Class 2: PQ = SQ = RQ = 0.
    # All: PQ = (50 + 0) / 2 = 25, SQ = (100 + 0) / 2 = 50, RQ = 25.
    metric = PanopticQuality({1: True, 2: False})
    metric.update(
        row(10, 10, 10, 10, 0, 0, 0, 0, 11, 11, 11, 11),
        segs((10, 1), (11, 1)),
        row(1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        segs((1, 1), (2, 1), (3, 2)),
    )
    result = metric.compute()
    assert (result["PQ/1"], result["SQ/1"], result["RQ/1"]) == pytest.approx((50.0, 100.0, 50.0))
    assert (result["PQ/2"], result["SQ/2"], result["RQ/2"]) == pytest.approx((0.0, 0.0, 0.0))
    assert (result["PQ"], result["SQ"], result["RQ"]) == pytest.approx((25.0, 50.0, 25.0))


def test_things_and_stuff_are_averaged_apart():
    # Thing class 1 predicted exactly (PQ 100); stuff class 2 (10 pixels) predicted on 6 of them
    # (IoU 0.6: PQ 60). All = (100 + 60) / 2 = 80, Things = 100, Stuff = 60.
    metric = PanopticQuality({1: True, 2: False})
    metric.update(
        row(*[1] * 10, *[2] * 6, 0, 0, 0, 0),
        segs((1, 1), (2, 2)),
        row(*[1] * 10, *[2] * 10),
        segs((1, 1), (2, 2)),
    )
    result = metric.compute()
    assert (result["PQ"], result["PQ_th"], result["PQ_st"]) == pytest.approx((80.0, 100.0, 60.0))
    assert (result["SQ_st"], result["RQ_st"]) == pytest.approx((60.0, 100.0))


def test_class_with_no_tp_fp_fn_is_left_out_of_the_means():
    # Class 3 never appears: the mean is over classes 1 and 2 (100, not 200 / 3); its own PQ is NaN.
    ids = row(1, 1, 2, 2)
    metric = PanopticQuality({1: True, 2: False, 3: True})
    metric.update(ids, segs((1, 1), (2, 2)), ids, segs((1, 1), (2, 2)))
    result = metric.compute()
    assert result["PQ"] == pytest.approx(100.0)
    assert result["PQ_th"] == pytest.approx(100.0)
    assert np.isnan(result["PQ/3"])


def test_no_class_seen_gives_nan_means():
    metric = PanopticQuality({1: True, 2: False})
    metric.update(row(0, 0), [], row(0, 0), [])
    assert np.isnan(metric.compute()["PQ"])


def random_image(rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray, list]:
    """A 12 x 12 gt of 3 x 3 blocks (some void, one crowd segment at most per class, one id left unlisted)
    and a prediction that keeps most of the gt with some ids merged, relabelled or scattered."""
    gt = rng.integers(0, 8, size=(4, 4)).repeat(3, 0).repeat(3, 1)
    gt_list = [int(i) for i in np.unique(gt) if i != 0 and i != 7]  # id 7 stays without segment info
    gt_classes = {i: int(rng.integers(1, 5)) for i in gt_list}
    crowd_classes: set[int] = set()
    gt_segments = []
    for i in gt_list:
        crowd = gt_classes[i] not in crowd_classes and rng.random() < 0.3
        crowd_classes |= {gt_classes[i]} if crowd else set()
        gt_segments.append({"id": i, "category_id": gt_classes[i], "iscrowd": int(crowd)})
    pred = np.where(rng.random(gt.shape) < 0.15, rng.integers(0, 12, gt.shape), gt * 3 % 11)
    pred_classes = {int(i): gt_classes.get(int(i) * 4 % 11, int(rng.integers(1, 5))) for i in np.unique(pred)}
    pred_segments = [
        {"id": i, "category_id": c if rng.random() < 0.8 else int(rng.integers(1, 5))}
        for i, c in pred_classes.items()
        if i != 0
    ]
    return pred, pred_segments, gt, gt_segments


def slow_reference(images: list, categories: list[int]) -> np.ndarray:
    """The COCO panoptic API's per-image loops over segment pairs, for [tp, fp, fn, iou_sum] per class."""
    stats = defaultdict(lambda: np.zeros(4))
    for pred, pred_segments, gt, gt_segments in images:
        gt_info = {s["id"]: s for s in gt_segments}
        pred_info = {s["id"]: s for s in pred_segments}
        void = ~np.isin(gt, list(gt_info))
        matched_gt, matched_pred = set(), set()
        for g, gs in gt_info.items():
            for p, ps in pred_info.items():
                if gs["iscrowd"] or gs["category_id"] != ps["category_id"]:
                    continue
                inter = np.sum((gt == g) & (pred == p))
                union = np.sum(gt == g) + np.sum(pred == p) - inter - np.sum(void & (pred == p))
                if inter / union > 0.5:
                    stats[gs["category_id"]] += [1, 0, 0, inter / union]
                    matched_gt.add(g)
                    matched_pred.add(p)
        crowd_of_class = {}
        for g, gs in gt_info.items():
            if gs["iscrowd"]:
                crowd_of_class[gs["category_id"]] = g
            elif g not in matched_gt:
                stats[gs["category_id"]] += [0, 0, 1, 0]
        for p, ps in pred_info.items():
            if p in matched_pred:
                continue
            ignored = np.sum(void & (pred == p))
            if ps["category_id"] in crowd_of_class:
                ignored += np.sum((gt == crowd_of_class[ps["category_id"]]) & (pred == p))
            if ignored / np.sum(pred == p) <= 0.5:
                stats[ps["category_id"]] += [0, 1, 0, 0]
    return np.array([stats[c] for c in categories])


def test_vectorised_counts_equal_a_slow_reference_on_random_images():
    rng = np.random.default_rng(0)
    categories = {1: True, 2: True, 3: False, 4: False}
    images = [random_image(rng) for _ in range(30)]
    metric = PanopticQuality(categories)
    for image in images:
        metric.update(*image)
    expected = slow_reference(images, sorted(categories))
    assert expected[:, 0].sum() > 10 and expected[:, 1].sum() > 10 and expected[:, 2].sum() > 10
    np.testing.assert_allclose(metric.state(), expected)


def test_merging_two_halves_equals_one_pass():
    rng = np.random.default_rng(1)
    categories = {1: True, 2: True, 3: False, 4: False}
    images = [random_image(rng) for _ in range(10)]
    whole, first, second = (PanopticQuality(categories) for _ in range(3))
    for index, image in enumerate(images):
        whole.update(*image)
        (first if index < 5 else second).update(*image)
    first.merge(second)
    np.testing.assert_allclose(first.state(), whole.state())
    assert first.compute() == pytest.approx(whole.compute(), nan_ok=True)

    reloaded = PanopticQuality(categories)
    reloaded.load_state(first.state())
    assert reloaded.compute() == pytest.approx(whole.compute(), nan_ok=True)


def test_png_id_without_segment_info_is_a_user_error():
    metric = PanopticQuality({1: True})
    with pytest.raises(UserError, match=r"ids \[4\] are in the PNG"):
        metric.update(row(3, 4), segs((3, 1)), row(1, 1), segs((1, 1)))


def test_segment_info_absent_from_the_png_is_a_user_error():
    metric = PanopticQuality({1: True})
    with pytest.raises(UserError, match=r"ids \[4\] are in segments_info"):
        metric.update(row(3, 3), segs((3, 1), (4, 1)), row(1, 1), segs((1, 1)))


def test_unknown_category_is_a_user_error():
    metric = PanopticQuality({1: True})
    with pytest.raises(UserError, match="category_id 9"):
        metric.update(row(3, 3), segs((3, 9)), row(1, 1), segs((1, 1)))


def test_rgb_and_id_convert_both_ways():
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb[1, 0].tolist() == [0, 1, 0] and rgb[1, 1].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


def test_coco_panoptic_files_score_like_the_streamed_metric(tmp_path):
    rng = np.random.default_rng(2)
    categories = {1: True, 2: True, 3: False, 4: False}
    images = [random_image(rng) for _ in range(4)]
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
    gt_annotations, pred_annotations = [], []
    for image_id, (pred, pred_segments, gt, gt_segments) in enumerate(images):
        Image.fromarray(id_to_rgb(gt)).save(tmp_path / "gt" / f"{image_id}.png")
        Image.fromarray(id_to_rgb(pred)).save(tmp_path / "pred" / f"{image_id}.png")
        gt_annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": gt_segments})
        pred_annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": pred_segments}
        )
    gt_categories = [{"id": c, "isthing": int(t)} for c, t in categories.items()]
    gt_json = {"annotations": gt_annotations, "categories": gt_categories}
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_annotations}))

    streamed = PanopticQuality(categories)
    for image in images:
        streamed.update(*image)
    scored = pq_from_coco_files(tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json", tmp_path / "pred")
    assert scored == pytest.approx(streamed.compute(), nan_ok=True)

    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_annotations[1:]}))
    with pytest.raises(UserError, match="no prediction for image_id 0"):
        pq_from_coco_files(tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json", tmp_path / "pred")
