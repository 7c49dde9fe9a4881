"""Hungarian matching: the assignment of least total cost, the same for all sets at once as set by set."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from model.errors import UserError
from model.matcher import HungarianMatcher

NUM_POINTS = 64
K = 3  # classes, no-object is class 3


def random_predictions(batch_size, num_queries=4, generator=None):
    return {
        "pred_logits": torch.randn(batch_size, num_queries, K + 1, generator=generator),
        "pred_masks": torch.randn(batch_size, num_queries, 6, 6, generator=generator) * 3,
    }


def random_targets(counts, generator=None):
    return [
        {"labels": torch.randint(0, K, (n,), generator=generator), "masks": torch.rand(n, 24, 24, generator=generator) > 0.5}
        for n in counts
    ]


def reference_cost(logits, masks, labels, target_masks, coords):
    """(Q, N) costs of one image, pair by pair, with the losses torch defines.

    logits (Q, K+1), masks (Q, h, w), labels (N,), target_masks (N, H, W), coords (P, 2) in [0, 1].
    """
    grid = (2 * coords - 1).view(1, 1, -1, 2)
    pred = F.grid_sample(masks[:, None], grid.expand(len(masks), -1, -1, -1), align_corners=False).flatten(1)
    tgt = F.grid_sample(target_masks[:, None].float(), grid.expand(len(target_masks), -1, -1, -1), align_corners=False).flatten(1)
    prob = logits.softmax(-1)
    cost = torch.zeros(len(masks), len(target_masks))
    for q, n in itertools.product(range(len(masks)), range(len(target_masks))):
        bce = F.binary_cross_entropy_with_logits(pred[q], tgt[n])
        p = pred[q].sigmoid()
        dice = 1 - (2 * (p * tgt[n]).sum() + 1) / (p.sum() + tgt[n].sum() + 1)
        cost[q, n] = 2.0 * -prob[q, labels[n]] + 5.0 * bce + 5.0 * dice
    return cost


@pytest.mark.parametrize("seed", range(5))
def test_assignment_is_the_cheapest_of_all_permutations(seed):
    generator = torch.Generator().manual_seed(seed)
    outputs, targets = random_predictions(2, generator=generator), random_targets([3, 2], generator=generator)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=NUM_POINTS)

    torch.manual_seed(seed)  # the matcher draws its points as torch.rand(B, num_points, 2)
    indices = matcher(outputs, targets)
    torch.manual_seed(seed)
    coords = torch.rand(2, NUM_POINTS, 2)

    for i, (queries, matched) in enumerate(indices):
        cost = reference_cost(outputs["pred_logits"][i], outputs["pred_masks"][i], targets[i]["labels"], targets[i]["masks"], coords[i])
        num_targets = len(targets[i]["labels"])
        # brute force: every injective map of the targets to the 4 queries
        best = min(itertools.permutations(range(4), num_targets), key=lambda qs: sum(cost[q, n] for n, q in enumerate(qs)))
        assert queries.dtype == matched.dtype == torch.int64
        assert sorted(matched.tolist()) == list(range(num_targets))
        assert dict(zip(matched.tolist(), queries.tolist())) == dict(enumerate(best))
        assert cost[queries, matched].sum() == pytest.approx(sum(cost[q, n] for n, q in enumerate(best)).item(), rel=1e-5)


def test_matching_all_sets_at_once_equals_matching_each_set():
    generator = torch.Generator().manual_seed(0)
    sets = [random_predictions(3, num_queries=5, generator=generator) for _ in range(4)]
    targets = random_targets([2, 0, 4], generator=generator)
    matcher = HungarianMatcher(num_points=NUM_POINTS)

    torch.manual_seed(1)
    together = matcher.match_all(sets, targets)
    for outputs, indices in zip(sets, together):
        torch.manual_seed(1)  # the same points as the joint call
        alone = matcher(outputs, targets)
        for (q1, t1), (q2, t2) in zip(indices, alone):
            assert torch.equal(q1, q2) and torch.equal(t1, t2)


def test_matching_all_sets_copies_costs_to_the_host_once(monkeypatch):
    copies = []
    original_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return original_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    sets = [random_predictions(2) for _ in range(10)]
    HungarianMatcher(num_points=NUM_POINTS).match_all(sets, random_targets([3, 1]))
    assert copies == [(10, 2, 4, 3)]  # (sets, images, queries, most targets)


def test_an_image_without_targets_gets_empty_indices():
    matcher = HungarianMatcher(num_points=NUM_POINTS)
    indices = matcher(random_predictions(2), random_targets([0, 2]))
    assert [len(q) for q, _ in indices] == [0, 2] and [len(t) for _, t in indices] == [0, 2]
    assert indices[0][0].dtype == torch.int64

    empty = matcher(random_predictions(2), random_targets([0, 0]))
    assert all(len(q) == len(t) == 0 for q, t in empty)


def test_more_targets_than_queries_matches_every_query():
    queries, matched = HungarianMatcher(num_points=NUM_POINTS)(random_predictions(1, num_queries=2), random_targets([5]))[0]
    assert sorted(queries.tolist()) == [0, 1] and len(set(matched.tolist())) == 2


def test_all_costs_zero_is_refused():
    with pytest.raises(UserError, match="cost_class"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)
