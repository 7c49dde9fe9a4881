"""Where a trial's time goes: the phases add up on a fake clock, and every report carries them."""

from types import SimpleNamespace

import pytest

from automl import trial_timing
from automl.trial_timing import TrialTiming, overhead_line


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(trial_timing, "time", SimpleNamespace(monotonic=clock))  # this module's clock only
    return clock


def test_phases_are_timed_and_every_report_carries_their_totals(clock):
    timing, reports = TrialTiming(), []
    report = timing.wrap(lambda metrics, **kwargs: (reports.append(metrics), setattr(clock, "now", clock.now + 0.5)))
    training, sanity = SimpleNamespace(sanity_checking=False), SimpleNamespace(sanity_checking=True)
    clock.now += 3.0  # data and model built, sanity check started
    timing.on_validation_start(sanity, None)
    clock.now += 1.0
    timing.on_validation_end(sanity, None)  # sanity checks are setup, not validation
    for _ in range(2):  # two steps of 2 s with 0.25 s waiting for data between them
        clock.now += 0.25
        timing.on_train_batch_start(training, None, None, 0)
        clock.now += 2.0
        timing.on_train_batch_end(training, None)
    timing.on_validation_start(training, None)
    clock.now += 1.5
    timing.on_validation_end(training, None)
    clock.now += 0.2  # saving the checkpoint
    report({"PQ": 10.0}, checkpoint=None)
    assert reports[0]["PQ"] == 10.0
    assert reports[0]["first_step_s"] == pytest.approx(4.25)
    assert reports[0]["train_s"] == pytest.approx(4.0) and reports[0]["val_s"] == pytest.approx(1.5)
    assert reports[0]["checkpoint_s"] == pytest.approx(0.2)  # the report's own time is counted after it is sent
    assert timing.seconds["checkpoint_s"] == pytest.approx(0.7)


def test_overhead_line_names_every_phase_and_the_share_that_is_not_training_or_validation():
    seconds = {"first_step_s": 10.0, "train_s": 30.0, "val_s": 10.0, "checkpoint_s": 2.0, "teardown_s": 3.0}
    line = overhead_line("t03", seconds, wall=55.0)
    assert line == "t03: first step 10.0 s, train 30.0 s, validation 10.0 s, checkpoint 2.0 s, teardown 3.0 s; overhead 27% of 55.0 s"
