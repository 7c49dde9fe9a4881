"""Learning-rate schedules as multipliers of the base lr, defined over a run's actual steps.

Each schedule is a function of the optimiser step, built from the total number of steps the
run will take, so a short run (a sweep trial) anneals as fully as a long one.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

SCHEDULES = ("MultiStep", "Warmuppoly", "Cosine")


def milestone_steps(milestones: Sequence[float], num_epochs: int, steps_per_epoch: int) -> list[int]:
    """Epoch milestones -> step milestones.

    Reference specs carry milestones for long runs (e.g. [88, 96]); when the last one does not
    fall inside this run they are scaled so the decays keep their place in the run (88/97 and
    96/97 of the way through).
    """
    if not milestones:
        return []
    last = max(milestones)
    scale = num_epochs / (last + 1) if last >= num_epochs else 1.0
    return sorted(int(round(m * scale * steps_per_epoch)) for m in milestones)


def lr_multiplier(
    name: str,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    poly_power: float = 0.9,
) -> Callable[[int], float]:
    """The multiplier of the base lr at optimiser step `step` (0-based) for schedule `name`.

    A linear warm-up from 0.001x over `warmup_steps` precedes every schedule.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; expected one of {SCHEDULES}")
    total_steps = max(total_steps, 1)

    def multiplier(step: int) -> float:
        warmup = 1.0
        if step < warmup_steps:
            alpha = step / warmup_steps
            warmup = 0.001 * (1 - alpha) + alpha
        if name == "MultiStep":
            decay = gamma ** sum(step >= m for m in milestones)
        elif name == "Warmuppoly":
            decay = (1.0 - min(step, total_steps) / total_steps) ** poly_power
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        return warmup * decay

    return multiplier
