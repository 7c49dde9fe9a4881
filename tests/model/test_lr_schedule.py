"""Learning-rate schedules over a run's steps: warm-up, milestones, poly and cosine decay."""

import math

import pytest

from model.lr_schedule import lr_multiplier, milestone_steps


def test_multistep_decays_at_each_milestone():
    f = lr_multiplier("MultiStep", 100, milestones=[50, 80], gamma=0.1)
    assert [f(0), f(49), f(50), f(79), f(80), f(99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_warmup_rises_linearly_from_a_thousandth():
    f = lr_multiplier("Cosine", 1000, warmup_steps=10)
    assert f(0) == pytest.approx(0.001 * 1.0)
    assert f(5) == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 5 / 1000)))
    assert f(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 1000)))


def test_poly_and_cosine_reach_zero_at_the_end_of_the_run():
    poly = lr_multiplier("Warmuppoly", 200, poly_power=0.9)
    cosine = lr_multiplier("Cosine", 200)
    assert poly(100) == pytest.approx(0.5**0.9)
    assert cosine(100) == pytest.approx(0.5)
    assert poly(200) == 0.0 and cosine(200) == pytest.approx(0.0)


def test_reference_milestones_scale_into_a_short_run():
    # [88, 96] of a long run, 10 epochs of 20 steps: 88/97 and 96/97 of the way through.
    assert milestone_steps([88, 96], num_epochs=10, steps_per_epoch=20) == [round(88 * 10 / 97 * 20), round(96 * 10 / 97 * 20)]
    # Milestones inside the run stay where they are.
    assert milestone_steps([3, 6], num_epochs=10, steps_per_epoch=20) == [60, 120]


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_multiplier("Step", 10)
