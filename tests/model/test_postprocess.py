"""Post-processing on hand-built query outputs: panoptic merging and dropping, instance scores, semantic maps, resizing."""

import math

import pytest
import torch

from model.errors import UserError
from model.postprocess import Postprocessor, instance_inference, panoptic_inference, semantic_inference

ON, OFF = 20.0, -20.0  # mask logits: sigmoid ~ 1 and ~ 0


def class_logits(*probabilities):
    """Logits whose softmax is the given rows of probabilities (no-object last)."""
    return torch.tensor(probabilities).log()


def masks_from(*pictures):
    """Mask logits (Q, H, W) from pictures of '#' (ON) and '.' (OFF)."""
    return torch.tensor([[[ON if c == "#" else OFF for c in row] for row in picture.split()] for picture in pictures])


def test_two_queries_of_one_stuff_class_make_one_segment():
    # classes: 0 thing, 1 stuff, 2 stuff; query 2 predicts no-object; the bottom row nobody claims
    logits = class_logits([0.05, 0.9, 0.0, 0.05], [0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.0, 0.9])
    masks = masks_from("##.. ##.. ....", "..## ..## ....", "#### #### ####")
    panoptic, segments = panoptic_inference(logits, masks, [True, False, False], object_mask_threshold=0.8, overlap_threshold=0.8)
    assert panoptic.dtype == torch.int32
    assert panoptic.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert len(segments) == 1
    assert segments[0]["id"] == 1 and segments[0]["category_id"] == 1 and segments[0]["isthing"] is False
    assert segments[0]["score"] == pytest.approx(0.9)  # the best of the merged queries


def test_two_queries_of_one_thing_class_stay_two_segments():
    logits = class_logits([0.9, 0.05, 0.05], [0.85, 0.05, 0.1])
    masks = masks_from("##.. ##..", "..## ..##")
    panoptic, segments = panoptic_inference(logits, masks, [True, False], object_mask_threshold=0.8, overlap_threshold=0.8)
    assert panoptic.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [(1, 0, True), (2, 0, True)]


@pytest.mark.parametrize("overlap_threshold, kept", [(0.8, False), (0.4, True)])
def test_a_query_mostly_covered_by_a_stronger_one_is_dropped(overlap_threshold, kept):
    # query 0 (score 0.9) covers columns 0-2; query 1 (score 0.85) covers columns 2-3 but owns
    # only column 3: half its mask, under 0.8, over 0.4
    logits = class_logits([0.9, 0.05, 0.05], [0.85, 0.05, 0.1])
    masks = masks_from("###. ###.", "..## ..##")
    panoptic, segments = panoptic_inference(logits, masks, [True, False], object_mask_threshold=0.8, overlap_threshold=overlap_threshold)
    last = 2 if kept else 0
    assert panoptic.tolist() == [[1, 1, 1, last], [1, 1, 1, last]]
    assert len(segments) == (2 if kept else 1)


def test_queries_under_the_object_threshold_leave_void():
    logits = class_logits([0.7, 0.2, 0.1])
    panoptic, segments = panoptic_inference(logits, masks_from("## ##"), [True, False], object_mask_threshold=0.8, overlap_threshold=0.8)
    assert panoptic.tolist() == [[0, 0], [0, 0]] and segments == []


def test_instance_top_k_scores_are_class_times_mean_mask_probability():
    # flattened (query, class) probabilities: q0 [0.6, 0.3], q1 [0.2, 0.7] -> top 2: (q1, 1), (q0, 0)
    logits = class_logits([0.6, 0.3, 0.1], [0.2, 0.7, 0.1])
    masks = torch.tensor([[[2.0, 0.5], [-1.0, -3.0]], [[1.0, 1.0], [1.0, -1.0]]])
    result = instance_inference(logits, masks, topk=2)

    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert result["labels"].tolist() == [1, 0]
    assert result["scores"].tolist() == pytest.approx([0.7 * sigmoid(1.0), 0.6 * (sigmoid(2.0) + sigmoid(0.5)) / 2], rel=1e-5)
    assert result["masks"].tolist() == [[[True, True], [True, False]], [[True, True], [False, False]]]

    things_only = instance_inference(logits, masks, topk=2, keep_class=torch.tensor([True, False]))
    assert things_only["labels"].tolist() == [0] and things_only["masks"].shape == (1, 2, 2)


def test_semantic_scores_and_argmax():
    logits = class_logits([0.8, 0.1, 0.1], [0.1, 0.8, 0.1])
    masks = masks_from("#. #.", ".# .#")
    scores = semantic_inference(logits, masks)
    assert scores.shape == (2, 2, 2)
    assert scores[:, 0, 0].tolist() == pytest.approx([0.8, 0.1], abs=1e-6)
    assert scores.argmax(0).tolist() == [[0, 1], [0, 1]]


def test_outputs_are_cropped_to_the_image_and_resized_to_the_original():
    # 1/4-resolution logits of a 16 x 16 padded input whose image is the top-left 8 x 12
    # (cells rows 0-1, columns 0-2: ON); the image was resized from 4 x 6. Without the crop, or with
    # height and width swapped, the padding's OFF logits would reach the output.
    masks = torch.full((1, 4, 4), -10.0)
    masks[0, :2, :3] = 10.0
    logits = class_logits([0.9, 0.05, 0.05])
    result = Postprocessor("instance", num_classes=2, test_topk_per_image=1)(logits, masks, (8, 12), (4, 6))
    assert result["semantic"].shape == (4, 6) and result["sem_seg"].shape == (2, 4, 6)
    assert result["instances"]["masks"].shape == (1, 4, 6) and bool(result["instances"]["masks"].all())
    assert "panoptic" not in result


def test_panoptic_mode_gives_every_output_with_things_only_instances():
    logits = class_logits([0.05, 0.9, 0.05], [0.9, 0.05, 0.05])
    masks = torch.stack([torch.full((2, 2), 5.0), torch.full((2, 2), -5.0)])
    result = Postprocessor("panoptic", 2, [True, False], test_topk_per_image=4)(logits, masks, (8, 8), (8, 8))
    assert set(result) == {"sem_seg", "semantic", "instances", "panoptic", "segments"}
    assert result["instances"]["labels"].tolist() == [0, 0]
    assert result["panoptic"].shape == (8, 8) and [s["category_id"] for s in result["segments"]] == [1]


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="task"):
        Postprocessor("depth", 2, [True, False])
    with pytest.raises(UserError, match="is_thing"):
        Postprocessor("panoptic", 2)
    with pytest.raises(UserError, match="one per class"):
        Postprocessor("panoptic", 3, [True, False])
