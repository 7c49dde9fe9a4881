"""A search-space mapping checked entry by entry against the train spec's field metadata -> `Parameter`s.

Each entry is refused with a message naming the file and key when the field cannot be searched
or the entry leaves the field's bounds, options or `math_cond`; the relations between keys are
folded in afterwards (automl.search.dependencies).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import replace
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from automl.search.dependencies import apply_dependencies, never_active
from automl.search.parameter import CHOICE_KINDS, NUMBER_KINDS, Parameter, is_architecture
from automl.spec.conditions import parse_math_cond
from automl.spec.fields import Leaf
from automl.spec.schema import train_leaves
from model.errors import UserError

log = logging.getLogger(__name__)

# What a search-space entry may set.
ENTRY_KEYS = ("min", "max", "log", "options", "weights", "values", "optional")
PRETRAINED_KEY = "train.pretrained_model_path"


def parameters_from_mapping(entries: Any, spec: DictConfig, source: str) -> list[Parameter]:
    """Check a mapping of dotted keys to range overrides against the schema and `spec`.

    `source` names the file (or inline mapping) in every error.
    """
    if not isinstance(entries, Mapping):
        raise UserError(f"{source}: expected a mapping of dotted spec keys to ranges, got {type(entries).__name__}")
    if not entries:
        raise UserError(f"{source}: the search space is empty; list at least one automl-enabled key (see search_spaces/default.yaml)")
    leaves = train_leaves()
    parameters = {str(key): _parameter(str(key), entry, leaves, spec, source) for key, entry in entries.items()}
    optional = {str(key) for key, entry in entries.items() if isinstance(entry, Mapping) and entry.get("optional")}
    pretrained = OmegaConf.select(spec, PRETRAINED_KEY)
    inapplicable = [
        key for key, p in parameters.items() if (pretrained and is_architecture(key, p.kind)) or never_active(leaves[key], parameters, spec)
    ]
    for key in inapplicable:
        if key not in optional:
            continue  # refused below with the reason
        log.info("%s: %s is not searched: it does not apply to this spec", source, key)
        del parameters[key]
    _refuse_architecture_over_pretrained(parameters, pretrained, source)
    if not parameters:
        raise UserError(f"{source}: no key of the space applies to this spec; list at least one that does")
    apply_dependencies(parameters, leaves, spec, source)
    return list(parameters.values())


def _refuse_architecture_over_pretrained(parameters: dict[str, Parameter], pretrained: str | None, source: str) -> None:
    shaped = [key for key, p in parameters.items() if is_architecture(key, p.kind)]
    if pretrained and shaped:
        raise UserError(
            f"{source}: {', '.join(shaped)} change the network's shape, but {PRETRAINED_KEY} loads {pretrained}, whose weights "
            "for those layers would be discarded; search them without pretrained weights, or drop them (or mark them optional: true)"
        )


def _parameter(key: str, entry: Any, leaves: dict[str, Leaf], spec: DictConfig, source: str) -> Parameter:
    where = f"{source}: {key}"
    leaf = leaves.get(key)
    if leaf is None:
        close = difflib.get_close_matches(key, leaves, n=3, cutoff=0.8)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UserError(f"{where}: not a key of the spec{hint}")
    if leaf.meta.get("automl_enabled") is not True:
        raise UserError(f"{where}: not automl-enabled in the train schema, so a sweep may not vary it")
    if leaf.kind not in NUMBER_KINDS + CHOICE_KINDS:
        raise UserError(f"{where}: a {leaf.kind} value cannot be searched")
    entry = {} if entry is None else entry
    if not isinstance(entry, Mapping):
        raise UserError(f"{where}: expected a mapping of {', '.join(ENTRY_KEYS)} (or {{}}), got {entry!r}")
    unknown = [name for name in entry if name not in ENTRY_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown setting {', '.join(map(str, unknown))}; expected some of {', '.join(ENTRY_KEYS)}")
    if not isinstance(entry.get("optional", False), bool):
        raise UserError(f"{where}: optional must be true or false; got {entry['optional']!r}")
    entry = {name: value for name, value in entry.items() if name != "optional"}
    spec_value = OmegaConf.select(spec, key)
    if leaf.kind in CHOICE_KINDS:
        return _choice_parameter(leaf, entry, where, spec_value)
    return _number_parameter(leaf, entry, where, spec_value)


def _choice_parameter(leaf: Leaf, entry: Mapping, where: str, spec_value: Any) -> Parameter:
    for name in ("min", "max", "log", "values"):
        if name in entry:
            raise UserError(f"{where}: '{name}' is for numbers; a {leaf.kind} parameter takes options (and weights)")
    allowed = [False, True] if leaf.kind == "bool" else list(leaf.meta["valid_options"])
    options = entry.get("options", allowed)
    if not isinstance(options, list) or not options:
        raise UserError(f"{where}: options must be a non-empty list drawn from {allowed}")
    outside = [o for o in options if o not in allowed]
    if outside:
        raise UserError(f"{where}: options {outside} are not in the schema's {allowed}")
    if "weights" in entry:
        weights = entry["weights"]
        if not isinstance(weights, list) or len(weights) != len(options):
            raise UserError(f"{where}: weights must be a list of {len(options)} numbers, one per option {options}; got {weights!r}")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
            raise UserError(f"{where}: weights must be numbers >= 0, not all 0; got {weights!r}")
    elif leaf.meta.get("option_weights"):
        weights = [leaf.meta["option_weights"][allowed.index(o)] for o in options]
    else:
        weights = [1.0] * len(options)
    kept = [(o, float(w)) for o, w in zip(options, weights) if w > 0]  # a weight of 0 never draws its option
    options, weights = [o for o, _ in kept], [w for _, w in kept]
    uniform = len(set(weights)) == 1
    return Parameter(leaf.key, leaf.kind, options=tuple(options), weights=None if uniform else tuple(weights), spec_value=spec_value)


def _number_parameter(leaf: Leaf, entry: Mapping, where: str, spec_value: Any) -> Parameter:
    kind = leaf.kind
    if "weights" in entry:
        raise UserError(f"{where}: 'weights' is for categorical parameters; give a number range with min/max, or options")
    if "options" in entry:
        return _number_choice(leaf, entry, where, spec_value)
    values = entry.get("values")
    if values is not None:
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: values must be a non-empty list of numbers; got {values!r}")
        values = [_number(v, kind, f"{where}: values") for v in values]
    schema_low, schema_high = leaf.meta["valid_min"], leaf.meta["valid_max"]
    low = _number(entry["min"], kind, f"{where}: min") if "min" in entry else (min(values) if values else schema_low)
    high = _number(entry["max"], kind, f"{where}: max") if "max" in entry else (max(values) if values else schema_high)
    if low < schema_low:
        raise UserError(f"{where}: min {low} is below the schema's minimum {schema_low}")
    if high > schema_high:
        raise UserError(f"{where}: max {high} is above the schema's maximum {schema_high}")
    if low > high:
        raise UserError(f"{where}: min {low} is greater than max {high}")
    log_scale = entry.get("log", bool(leaf.meta.get("log_scale")))
    if not isinstance(log_scale, bool):
        raise UserError(f"{where}: log must be true or false; got {log_scale!r}")
    if log_scale and low <= 0:
        raise UserError(f"{where}: a log scale needs min > 0; got min {low}")

    cond = parse_math_cond(leaf.meta["math_cond"]) if leaf.meta.get("math_cond") else None
    step = power_of = None
    if cond is not None:
        if cond.step is not None:
            step = int(cond.step) if kind == "int" else cond.step
        elif cond.power_of is not None:
            power_of = cond.power_of
        elif not (cond.holds(low) and cond.holds(high)):
            raise UserError(f"{where}: range [{low}, {high}] breaks the schema's condition '{cond.text}' ({cond.describe()})")
    parameter = Parameter(leaf.key, kind, low, high, log_scale, step, power_of, spec_value=spec_value)
    first, last = parameter.bounds()
    if first > last:
        raise UserError(f"{where}: no value between min {low} and max {high} is {cond.describe()}")
    parameter = replace(parameter, low=parameter.decode(first), high=parameter.decode(last))
    for v in values or ():
        if not low <= v <= high or (cond and not cond.holds(v)):
            condition = f" and {cond.describe()}" if cond else ""
            raise UserError(f"{where}: value {v} is not within [{low}, {high}]{condition}")
    return replace(parameter, values=tuple(values or ()))


def _number_choice(leaf: Leaf, entry: Mapping, where: str, spec_value: Any) -> Parameter:
    """A number drawn from a set of values (e.g. queries 100 or 200), each within the schema's rules."""
    others = [name for name in ("min", "max", "log", "values") if name in entry]
    if others:
        raise UserError(f"{where}: options list the values to choose from; drop {', '.join(others)}")
    options = entry["options"]
    if not isinstance(options, list) or not options:
        raise UserError(f"{where}: options must be a non-empty list of numbers; got {options!r}")
    options = sorted(set(_number(v, leaf.kind, f"{where}: options") for v in options))
    low, high = leaf.meta["valid_min"], leaf.meta["valid_max"]
    cond = parse_math_cond(leaf.meta["math_cond"]) if leaf.meta.get("math_cond") else None
    for v in options:
        if not low <= v <= high or (cond and not cond.holds(v)):
            condition = f" and {cond.describe()}" if cond else ""
            raise UserError(f"{where}: option {v} is not within the schema's [{low}, {high}]{condition}")
    return Parameter(leaf.key, leaf.kind, low=options[0], high=options[-1], options=tuple(options), spec_value=spec_value)


def _number(value: Any, kind: str, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: expected a number, got {value!r}")
    if kind == "int":
        if not float(value).is_integer():
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    return float(value)
