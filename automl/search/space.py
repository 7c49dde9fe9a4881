"""Search spaces: which spec keys a sweep varies and over what, checked against the train schema.

A search space is a YAML mapping (a preset in search_spaces/, a file, or inline in the spec under
`automl.search_space`) of dotted spec keys to optional overrides of the schema's range:

    train.optim.lr: {min: 1.0e-5, max: 1.0e-3}
    train.optim.weight_decay: {}                      # the schema's bounds and scale
    train.optim.lr_scheduler: {options: [MultiStep, Cosine], weights: [0.5, 0.5]}

An entry may set min, max, log (numbers), options (a set of values to choose from; with weights
for a categorical key) and values: the points a grid search tries; the other algorithms search from
min to max, which default to the values' span. `optional: true` leaves the key out, with a log
line, where it cannot apply to the spec (its condition does not hold, or it would change the shape
of weights that `train.pretrained_model_path` loads); without it such a key is refused.
`resolve_search_space(spec)` turns it into a `SearchSpace`, refusing anything the schema does not
allow before a trial runs. The space samples trial configs for Optuna (define-by-run), gives Ray
Tune domains (PBT) and grid points (grid search). A trial config is a flat dict of dotted keys to
values, e.g. {"train.optim.lr": 0.00031, "train.optim.lr_scheduler": "Cosine"}; a key whose
activation condition does not hold in that trial is left out (the spec's value stays).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf
from ray.tune.search.sample import Domain

from automl.search.entries import parameters_from_mapping
from automl.search.parameter import Parameter
from automl.spec.load import read_yaml
from automl.spec.schema import SPACES_DIR
from model.errors import UserError

INLINE_SOURCE = "automl.search_space (inline)"


class SearchSpace:
    """The parameters of a sweep, ordered so that every parameter comes after those it depends on."""

    def __init__(self, parameters: Sequence[Parameter], source: str = INLINE_SOURCE):
        self.source = source
        self.parameters = _dependencies_first(parameters)
        self._by_key = {p.key: p for p in self.parameters}

    def __len__(self) -> int:
        return len(self.parameters)

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self.parameters)

    def __getitem__(self, key: str) -> Parameter:
        return self._by_key[key]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.parameters]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Optuna define-by-run: one trial's config, {dotted key: value}, inactive keys left out."""
        config: dict[str, Any] = {}
        for p in self.parameters:
            if all(self._value(key, config) == expected for key, expected in p.active_when):
                config[p.key] = p.suggest(trial, self._lower_bound(p, config))
        return config

    def tune_domains(self) -> dict[str, Domain]:
        """Each parameter as a Ray Tune domain, drawn independently of the others.

        A parameter that must be >= another starts at the other's maximum, so that any
        combination of draws is valid; activation conditions are not expressed (an inactive
        value is drawn too and left unused by the trial).
        """
        return {p.key: p.tune_domain(self._independent_lower_bound(p)) for p in self.parameters}

    def grid(self) -> dict[str, list]:
        """Values per parameter for a grid search (every combination of them is valid).

        Combinations that differ only in a parameter whose activation condition does not hold
        train the same model.
        """
        grid = {}
        for p in self.parameters:
            lower = self._independent_lower_bound(p)
            values = p.grid_values(lower)
            if lower is not None and min(values) < lower:
                raise UserError(
                    f"{self.source}: {p.key}: grid value {min(values)} is below {lower}, the largest value of "
                    f"{' / '.join(p.at_least)} it must be >= in every combination; raise the values or narrow that range"
                )
            grid[p.key] = values
        return grid

    def grid_size(self) -> int:
        """Number of combinations in `grid()`: the trials a grid search needs."""
        return math.prod(len(values) for values in self.grid().values())

    def clip(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """`config` with every searched value moved to the nearest value the space allows.

        Keeps PBT's perturbations (value x 0.8 or x 1.2) inside the bounds, on multiples and
        powers, and above the values they must be >=.
        """
        clipped = dict(config)
        for p in self.parameters:
            if p.key in clipped:
                clipped[p.key] = p.snap(clipped[p.key], self._lower_bound(p, clipped))
        return clipped

    def describe(self) -> list[dict[str, str]]:
        """One row per parameter: key, type, range or options, scale, constraints, the spec's value."""
        return [p.describe() for p in self.parameters]

    def _value(self, key: str, config: Mapping[str, Any]) -> Any:
        return config[key] if key in config else self._by_key[key].spec_value

    def _lower_bound(self, p: Parameter, config: Mapping[str, Any]) -> float | None:
        others = [self._value(key, config) for key in p.at_least]
        return max((v for v in others if v is not None), default=None)

    def _independent_lower_bound(self, p: Parameter) -> float | None:
        return max((self._by_key[key].high for key in p.at_least), default=None)


def resolve_search_space(spec: DictConfig) -> SearchSpace:
    """The search space named by `spec.automl.search_space`: a preset, a YAML file or an inline mapping."""
    choice = OmegaConf.select(spec, "automl.search_space")
    if OmegaConf.is_dict(choice):
        return space_from_mapping(OmegaConf.to_container(choice), spec, INLINE_SOURCE)
    if isinstance(choice, Mapping):
        return space_from_mapping(choice, spec, INLINE_SOURCE)
    if isinstance(choice, str) and choice:
        preset = SPACES_DIR / f"{choice}.yaml"
        if choice in preset_names():
            return space_from_mapping(read_yaml(preset), spec, f"search_spaces/{choice}.yaml")
        path = Path(choice).expanduser()
        if path.is_file():
            return space_from_mapping(read_yaml(path), spec, str(path))
        raise UserError(
            f"automl.search_space: '{choice}' is neither a preset ({', '.join(preset_names())}) nor an existing YAML file"
        )
    raise UserError(
        f"automl.search_space: expected a preset name ({', '.join(preset_names())}), a YAML file, "
        f"or a mapping of spec keys to ranges; got {choice!r}"
    )


def preset_names() -> list[str]:
    """The search spaces shipped in search_spaces/ (named without '.yaml')."""
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def space_from_mapping(entries: Any, spec: DictConfig, source: str) -> SearchSpace:
    """Check a mapping of dotted keys to range overrides against the schema and `spec`; build the space.

    `source` names the file (or inline mapping) in every error.
    """
    return SearchSpace(parameters_from_mapping(entries, spec, source), source)


def _dependencies_first(parameters: Sequence[Parameter]) -> tuple[Parameter, ...]:
    """Keep the given order except that a parameter follows the parameters it depends on."""
    pending, ordered, placed = list(parameters), [], set()
    while pending:
        ready = next((p for p in pending if all(k in placed for k in p.at_least + tuple(k for k, _ in p.active_when))), None)
        if ready is None:
            raise ValueError(f"{[p.key for p in pending]} depend on each other or on keys outside the space")
        ordered.append(ready)
        placed.add(ready.key)
        pending.remove(ready)
    return tuple(ordered)

