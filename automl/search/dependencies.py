"""The schema's `depends_on` relations folded into searched parameters.

An order ('>= other.key') becomes a lower bound on every draw (narrowing ranges where only part of
them can hold); an activation ('other.key == value') samples a key only in trials where it holds.
A relation that no draw can satisfy is refused, naming the source and both keys.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping

from omegaconf import DictConfig, OmegaConf

from automl.search.parameter import Parameter
from automl.spec.conditions import Relation, parse_relation
from automl.spec.fields import Leaf
from model.errors import UserError

log = logging.getLogger(__name__)


def relations(leaf: Leaf) -> list[Relation]:
    return [parse_relation(text) for text in leaf.meta.get("depends_on") or ()]


def never_active(leaf: Leaf, parameters: Mapping[str, Parameter], spec: DictConfig) -> bool:
    """Whether an activation condition of `leaf` names an unsearched key whose spec value never meets it."""
    return any(
        r.is_activation and r.other not in parameters and OmegaConf.select(spec, r.other) != r.value for r in relations(leaf)
    )


def apply_dependencies(parameters: dict[str, Parameter], leaves: Mapping[str, Leaf], spec: DictConfig, source: str) -> None:
    """Fold every `depends_on` that touches a searched key into the searched parameters."""
    for key, leaf in leaves.items():
        for relation in relations(leaf):
            if relation.is_activation:
                if key in parameters:
                    parameters[key] = _activation(parameters[key], relation, parameters, spec, source)
                continue
            if relation.op not in (">=", "<="):
                raise ValueError(f"{key}: the search supports '>=' and '<=' relations, not '{relation.op}'")
            larger, smaller = (key, relation.other) if relation.op == ">=" else (relation.other, key)
            _order(larger, smaller, parameters, spec, source)


def _order(larger: str, smaller: str, parameters: dict[str, Parameter], spec: DictConfig, source: str) -> None:
    """Make every draw satisfy `larger >= smaller`, narrowing ranges where only part of them can."""
    big, small = parameters.get(larger), parameters.get(smaller)
    must = f"{larger} must be >= {smaller}"
    if big is not None and small is not None:
        if (big.is_choice or small.is_choice) and big.low < small.high:
            raise UserError(
                f"{source}: {larger}: a set of values must hold for every draw of {smaller}, but {big.low} < {small.high} "
                f"and {must}; give ranges instead, or sets that never overlap"
            )
        if big.high < small.low:
            raise UserError(
                f"{source}: {larger}: range [{big.low}, {big.high}] lies entirely below {smaller}'s "
                f"[{small.low}, {small.high}], but {must}"
            )
        if small.high > big.high:
            parameters[smaller] = _narrowed(small, high=big.high, source=source, why=must)
        parameters[larger] = replace(parameters[larger], at_least=big.at_least + (smaller,))
    elif big is not None:
        fixed = OmegaConf.select(spec, smaller)
        if fixed is None:
            return
        if big.high < fixed:
            raise UserError(f"{source}: {larger}: max {big.high} is below {smaller} = {fixed} (fixed in the spec), but {must}")
        if big.low < fixed:
            parameters[larger] = _narrowed(big, low=fixed, source=source, why=f"{must} ({fixed} in the spec)")
    elif small is not None:
        fixed = OmegaConf.select(spec, larger)
        if fixed is None:
            return
        if small.low > fixed:
            raise UserError(f"{source}: {smaller}: min {small.low} is above {larger} = {fixed} (fixed in the spec), but {must}")
        if small.high > fixed:
            parameters[smaller] = _narrowed(small, high=fixed, source=source, why=f"{must} ({fixed} in the spec)")


def _narrowed(p: Parameter, *, source: str, why: str, low: float | None = None, high: float | None = None) -> Parameter:
    narrowed = replace(p, low=p.low if low is None else low, high=p.high if high is None else high)
    first, last = narrowed.bounds()
    narrowed = replace(narrowed, low=narrowed.decode(first), high=narrowed.decode(last))
    outside = [v for v in p.values + p.options if not narrowed.low <= v <= narrowed.high]
    if outside:
        raise UserError(f"{source}: {p.key}: values {outside} fall outside [{narrowed.low}, {narrowed.high}], where {why}")
    log.warning("%s: %s: range narrowed from [%s, %s] to [%s, %s] because %s", source, p.key, p.low, p.high, narrowed.low, narrowed.high, why)
    return narrowed


def _activation(p: Parameter, relation: Relation, parameters: dict[str, Parameter], spec: DictConfig, source: str) -> Parameter:
    """'other.key == value': sample `p` only in trials where that holds; refuse it if it never can."""
    other, expected, raw = relation.other, relation.value, relation.raw
    controller = parameters.get(other)
    if controller is None:
        actual = OmegaConf.select(spec, other)
        if actual != expected:
            raise UserError(
                f"{source}: {p.key}: only used when {other} == {raw}, but the spec sets {other} to {actual!r}; "
                f"searching it has no effect (search {other} too, or drop {p.key})"
            )
        return p
    possible = expected in controller.options if controller.is_choice else controller.low <= expected <= controller.high
    if not possible:
        reach = controller.options if controller.is_choice else f"[{controller.low}, {controller.high}]"
        raise UserError(f"{source}: {p.key}: only used when {other} == {raw}, which the space never draws ({other}: {reach})")
    return replace(p, active_when=p.active_when + ((other, expected),))
