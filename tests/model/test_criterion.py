"""Mask2Former's losses: hand-worked values, the no-object weight, deep supervision, and that they can be minimised."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import criterion as criterion_module
from model.criterion import SetCriterion, dice_loss, sigmoid_bce_loss
from model.matcher import HungarianMatcher
from model.point_sampling import calculate_uncertainty, point_sample, uncertain_point_coords

K = 3  # classes; no-object is class 3
NUM_POINTS = 64


def criterion(**kwargs):
    return SetCriterion(K, HungarianMatcher(num_points=NUM_POINTS), num_points=NUM_POINTS, **kwargs)


def box_targets():
    """Two images of 32 x 32: two boxes of classes 0 and 2, and one box of class 1."""
    first = torch.zeros(2, 32, 32, dtype=torch.bool)
    first[0, 4:16, 4:20] = True
    first[1, 16:28, 8:28] = True
    second = torch.zeros(1, 32, 32, dtype=torch.uint8)
    second[0, 8:24, 8:24] = 1
    return [{"labels": torch.tensor([0, 2]), "masks": first}, {"labels": torch.tensor([1]), "masks": second}]


def test_bce_and_dice_of_a_hand_worked_case():
    # two masks of two points; logits 0 give p = 1/2 everywhere
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # sigmoid(log 3) = 3/4
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # BCE: mask 0 = log 2 at both points; mask 1 = (-log 3/4 + log 2) / 2
    expected_bce = (math.log(2) + (-math.log(0.75) + math.log(2)) / 2) / 2
    assert sigmoid_bce_loss(logits, labels).mean().item() == pytest.approx(expected_bce)
    # dice: mask 0 = 1 - (2 * 1/2 + 1) / (1 + 1 + 1) = 1/3; mask 1 = 1 - (2 * 5/4 + 1) / (5/4 + 2 + 1) = 1 - 14/17
    torch.testing.assert_close(dice_loss(logits, labels), torch.tensor([1 / 3, 3 / 17]))


def test_mask_losses_of_an_undecided_prediction_against_an_empty_target():
    # logits 0 read 0 at any point (also at the border); an empty target reads 0 everywhere, so
    # BCE = log 2 per point and dice = 1 - 1 / (P / 2 + 1), whatever the sampled points.
    outputs = {"pred_logits": torch.zeros(1, 2, K + 1), "pred_masks": torch.zeros(1, 2, 8, 8)}
    targets = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 32, 32, dtype=torch.bool)}]
    losses = criterion()(outputs, targets)
    assert losses["loss_mask"].item() == pytest.approx(math.log(2))
    assert losses["loss_dice"].item() == pytest.approx(1 - 1 / (NUM_POINTS / 2 + 1))
    # uniform class logits: every query's cross-entropy is log(K + 1), whatever the weights
    assert losses["loss_ce"].item() == pytest.approx(math.log(K + 1))


@pytest.mark.parametrize("no_object_weight", [0.1, 1.0])
def test_no_object_weight_scales_the_unmatched_queries_cross_entropy(no_object_weight):
    # query 0 matches the class-2 target (its mask fits it; query 1's mask is its opposite)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:, :8] = True
    masks = torch.where(torch.stack([mask, ~mask]), 10.0, -10.0)[None, :, ::4, ::4]
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0], [1.0, 0.0, -0.5, 1.5]]])
    targets = [{"labels": torch.tensor([2]), "masks": mask[None]}]
    losses = criterion(no_object_weight=no_object_weight)({"pred_logits": logits, "pred_masks": masks}, targets)

    matched = F.cross_entropy(logits[0, :1], torch.tensor([2]))
    unmatched = F.cross_entropy(logits[0, 1:], torch.tensor([K]))
    expected = (matched + no_object_weight * unmatched) / (1 + no_object_weight)
    assert losses["loss_ce"].item() == pytest.approx(expected.item())


def test_deep_supervision_adds_every_auxiliary_sets_losses():
    def predictions():
        return {"pred_logits": torch.randn(2, 5, K + 1), "pred_masks": torch.randn(2, 5, 8, 8)}

    outputs = {**predictions(), "aux_outputs": [predictions(), predictions()]}
    losses = criterion()(outputs, box_targets())
    names = ["loss_ce", "loss_mask", "loss_dice"]
    assert set(losses) == {f"{n}{s}" for n in names for s in ("", "_0", "_1")}
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    expected = sum(weights[n] * losses[f"{n}{s}"] for n in names for s in ("", "_0", "_1"))
    assert criterion().total_loss(losses).item() == pytest.approx(expected.item())

    assert set(criterion(deep_supervision=False)(outputs, box_targets())) == set(names)


def test_a_batch_without_targets_trains_every_query_to_no_object():
    masks = nn.Parameter(torch.randn(2, 4, 8, 8))
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}] * 2
    losses = criterion()({"pred_logits": torch.zeros(2, 4, K + 1), "pred_masks": masks}, targets)
    assert losses["loss_mask"].item() == losses["loss_dice"].item() == 0.0
    assert losses["loss_ce"].item() == pytest.approx(math.log(K + 1))
    criterion().total_loss(losses).backward()
    assert masks.grad is not None


def test_losses_fall_when_overfitting_one_batch():
    torch.manual_seed(0)

    def learnable():
        return nn.ParameterDict({"pred_logits": torch.randn(2, 6, K + 1), "pred_masks": torch.randn(2, 6, 8, 8)})

    final, aux = learnable(), learnable()
    optimizer = torch.optim.Adam([*final.parameters(), *aux.parameters()], lr=0.3)
    loss_fn, targets = criterion(), box_targets()
    history = []
    for _ in range(100):
        loss = loss_fn.total_loss(loss_fn({**final, "aux_outputs": [dict(aux)]}, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    # the mask losses are read mostly on the uncertain boundary points, so they stay well above 0
    assert history[-1] < 0.25 * history[0]
    # while the matched masks, read densely, now draw the boxes
    for (queries, matched), target, masks in zip(loss_fn.matcher(dict(final), targets), targets, final["pred_masks"]):
        dense = F.interpolate(masks[queries][None].detach(), size=(32, 32), mode="bilinear", align_corners=False)[0]
        assert ((dense > 0) == target["masks"][matched].bool()).float().mean() > 0.98


def test_point_sample_reads_pixel_centres_with_x_along_width():
    image = torch.arange(6.0).view(1, 1, 2, 3)  # rows [0 1 2], [3 4 5]
    centres = torch.tensor([[[0.5 / 3, 0.25], [2.5 / 3, 0.25], [1.5 / 3, 0.75]]])  # (x, y)
    assert point_sample(image, centres)[0, 0].tolist() == pytest.approx([0.0, 2.0, 4.0], abs=1e-6)


def test_uncertain_points_favour_the_decision_boundary():
    torch.manual_seed(0)
    logits = torch.linspace(-10, 10, 64).expand(1, 1, 64, 64).contiguous()  # boundary at the middle column
    coords = uncertain_point_coords(logits, calculate_uncertainty, num_points=100, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert coords.shape == (1, 100, 2) and coords.min() >= 0 and coords.max() <= 1
    distance = (coords[0, :, 0] - 0.5).abs()
    # the 75 importance points are the closest of 300 uniform draws; the 25 others are uniform
    assert distance[:75].max() < 0.35 and distance[:75].mean() < distance[75:].mean()


def test_each_sets_losses_equal_that_set_scored_alone(monkeypatch):
    # the same points for every matched mask, so that scoring all sets at once draws nothing differently
    points = torch.stack([torch.linspace(0.05, 0.95, NUM_POINTS), torch.linspace(0.05, 0.95, NUM_POINTS).flip(0)], -1)
    monkeypatch.setattr(criterion_module, "uncertain_point_coords", lambda logits, *args: points.expand(len(logits), -1, -1))
    generator = torch.Generator().manual_seed(0)

    def predictions():
        return {"pred_logits": torch.randn(2, 5, K + 1, generator=generator), "pred_masks": torch.randn(2, 5, 8, 8, generator=generator)}

    sets = [predictions() for _ in range(3)]
    torch.manual_seed(0)  # the matcher's points: the same draw for one set as for all
    together = criterion()({**sets[0], "aux_outputs": sets[1:]}, box_targets())
    for suffix, alone in zip(("", "_0", "_1"), sets):
        torch.manual_seed(0)
        single = criterion()(alone, box_targets())
        for name in ("loss_ce", "loss_mask", "loss_dice"):
            assert together[f"{name}{suffix}"].item() == pytest.approx(single[name].item(), rel=1e-5), (name, suffix)
