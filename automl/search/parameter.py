"""One searched spec key: its range, its grid and scale, and how Optuna and Ray Tune draw it.

A number is drawn in an internal coordinate (the value, its multiplier of a step, or its exponent
of a base) so that every draw lands on the grid the schema allows; a weighted choice is drawn as
a uniform number mapped through the options' cumulative weights.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import optuna
from ray import tune
from ray.tune.search.sample import Categorical, Domain, Sampler

# Points per number in a grid search when the entry gives no explicit `values`.
GRID_POINTS = 3
NUMBER_KINDS = ("float", "int")
CHOICE_KINDS = ("categorical", "bool")
# Integer keys under this prefix set layer counts and widths: the shape of the network's weights.
ARCHITECTURE_PREFIX = "model."


def is_architecture(key: str, kind: str) -> bool:
    """Whether a searched key changes the shape of the network's weights (a layer count or width)."""
    return kind == "int" and key.startswith(ARCHITECTURE_PREFIX)


@dataclass(frozen=True)
class Parameter:
    """One searched spec key and everything a sampler needs to draw valid values of it.

    Numbers are drawn in an internal coordinate: the value itself, its multiplier of `step`
    ('/ N' conditions) or its exponent of `power_of` ('^ N'), so every draw lands on the grid
    the schema allows. A weighted choice is drawn as a uniform number in [0, 1] mapped through
    the options' cumulative weights, because Optuna's categorical distribution has no weights.
    """

    key: str
    kind: str  # float, int, categorical or bool
    low: float | None = None  # numbers: inclusive bounds, on the step/power grid
    high: float | None = None
    log: bool = False
    step: float | None = None  # values are multiples of this
    power_of: int | None = None  # values are powers of this
    options: tuple = ()  # choices (and numbers given as a set): the values to pick from
    weights: tuple[float, ...] | None = None  # choices: sampling weights (None: uniform)
    values: tuple = ()  # numbers: explicit grid points
    at_least: tuple[str, ...] = ()  # searched keys this value must be >= in every trial
    active_when: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs that must all hold to sample it
    spec_value: Any = None  # the spec's own value (what a trial uses when the key is not sampled)

    @property
    def is_choice(self) -> bool:
        """Drawn from `options`: a categorical or bool key, or a number restricted to a set of values."""
        return self.kind in CHOICE_KINDS or bool(self.options)

    @property
    def is_discrete(self) -> bool:
        return self.kind == "int" or self.step is not None or self.power_of is not None

    def bounds(self, lower: float | None = None) -> tuple[float, float]:
        """Internal bounds of a number, its lower bound raised to `lower` when given."""
        low = self.low if lower is None else max(self.low, lower)
        if self.power_of is not None:
            return _exponent_at_least(low, self.power_of), _exponent_at_most(self.high, self.power_of)
        if self.step is not None:
            return math.ceil(round(low / self.step, 9)), math.floor(round(self.high / self.step, 9))
        if self.kind == "int":
            return math.ceil(low), math.floor(self.high)
        return low, self.high

    def decode(self, x: Any) -> Any:
        """Internal coordinate -> the value a trial gets."""
        if self.weights is not None:
            return self.options[min(bisect.bisect_right(self._cumulative_weights(), x), len(self.options) - 1)]
        if self.is_choice:
            return x
        if self.power_of is not None:
            value = self.power_of ** int(x)
        elif self.step is not None:
            value = int(x) * self.step
        else:
            value = x
        return int(round(value)) if self.kind == "int" else float(value)

    def encode(self, value: Any) -> Any:
        """The value a trial gets -> internal coordinate (the inverse of `decode`)."""
        if self.weights is not None:
            cumulative = self._cumulative_weights()
            i = self.options.index(value)
            return ((cumulative[i - 1] if i else 0.0) + cumulative[i]) / 2
        if self.power_of is not None:
            return _exponent_at_least(value, self.power_of)
        if self.step is not None:
            return int(round(value / self.step))
        return value

    def suggest(self, trial: optuna.Trial, lower: float | None = None) -> Any:
        """Ask Optuna for this parameter's value (named by its key), at least `lower` when given."""
        if self.is_choice and self.weights is None:
            return trial.suggest_categorical(self.key, list(self.options))
        if self.weights is not None:
            return self.decode(trial.suggest_float(self.key, 0.0, 1.0))
        low, high = self.bounds(lower)
        if self.is_discrete:
            return self.decode(trial.suggest_int(self.key, low, high, log=self.log and self.power_of is None))
        return self.decode(trial.suggest_float(self.key, low, high, log=self.log))

    def grid_values(self, lower: float | None = None) -> list:
        """Explicit values, every option, or GRID_POINTS numbers spread over the range (log-spaced on a log scale)."""
        if self.values:
            return list(self.values)
        if self.is_choice:
            return list(self.options)
        low, high = self.bounds(lower)
        spread = np.geomspace if self.log and self.power_of is None else np.linspace
        points = spread(low, high, GRID_POINTS)
        if self.is_discrete:
            points = np.round(points)
        return list(dict.fromkeys(self.decode(float(x)) for x in points))

    def tune_domain(self, lower: float | None = None) -> Domain:
        """This parameter as a Ray Tune domain, at least `lower` when given."""
        if self.is_choice:
            domain = Categorical(list(self.options))
            if self.weights is None:
                return domain.uniform()
            domain.set_sampler(WeightedChoice(self.weights))
            return domain
        low, high = self.bounds(lower)
        if self.power_of is not None:
            return tune.choice([self.decode(e) for e in range(low, high + 1)])
        if self.step is not None:
            first, last = self.decode(low), self.decode(high)
            if self.kind == "int":
                return (tune.qlograndint if self.log else tune.qrandint)(first, last, self.step)
            return (tune.qloguniform if self.log else tune.quniform)(first, last, self.step)
        if self.kind == "int":
            return (tune.lograndint if self.log else tune.randint)(low, high + 1)  # upper bound exclusive
        return (tune.loguniform if self.log else tune.uniform)(low, high)

    def snap(self, value: Any, lower: float | None = None) -> Any:
        """The nearest value this parameter allows: inside its bounds (from `lower`) and on its grid."""
        if self.is_choice:
            return value
        low, high = self.bounds(lower)
        if self.power_of is not None:
            x = math.log(value, self.power_of) if value > 0 else low
        elif self.step is not None:
            x = value / self.step
        else:
            x = value
        if self.is_discrete:
            x = round(x)
        return self.decode(min(max(x, low), high))

    def _cumulative_weights(self) -> list[float]:
        total = sum(self.weights)
        return list(np.cumsum(self.weights) / total)

    def describe(self) -> dict[str, str]:
        """One row: key, type, range or options, scale, constraints, the spec's value."""
        if self.is_choice:
            weights = self.weights or [None] * len(self.options)
            total = sum(self.weights) if self.weights else 1.0
            reach = ", ".join(str(o) if w is None else f"{o} ({w / total:.2f})" for o, w in zip(self.options, weights))
            scale = "weighted" if self.weights else "uniform"
        else:
            reach = f"[{self.low:g}, {self.high:g}]" + (f" grid {', '.join(f'{v:g}' for v in self.values)}" if self.values else "")
            scale = "exponent" if self.power_of is not None else ("log" if self.log else "linear")
        constraints = []
        if self.step is not None:
            constraints.append(f"multiple of {self.step:g}")
        if self.power_of is not None:
            constraints.append(f"power of {self.power_of}")
        constraints += [f">= {key}" for key in self.at_least]
        constraints += [f"when {key} == {value}" for key, value in self.active_when]
        return {
            "parameter": self.key,
            "type": self.kind,
            "range / options": reach,
            "scale": scale,
            "constraints": "; ".join(constraints),
            "spec value": repr(self.spec_value),
        }


class WeightedChoice(Sampler):
    """Ray Tune sampler for a `Categorical` domain that honours option weights."""

    def __init__(self, weights: Sequence[float]):
        self.probabilities = np.asarray(weights, dtype=float) / sum(weights)

    def sample(self, domain: Categorical, config: Any = None, size: int = 1, random_state: Any = None) -> Any:
        # Domain.sample hands us its numpy-compatible random state.
        indices = random_state.choice(len(domain.categories), size=size, p=self.probabilities)
        items = [domain.categories[i] for i in indices]
        return items if size > 1 else items[0]

    def __str__(self) -> str:
        return "Weighted"


def _exponent_at_least(value: float, base: int) -> int:
    """The smallest e >= 0 with base**e >= value."""
    e = 0
    while base**e < value:
        e += 1
    return e


def _exponent_at_most(value: float, base: int) -> int:
    """The largest e with base**e <= value (value >= 1)."""
    e = 0
    while base ** (e + 1) <= value:
        e += 1
    return e

