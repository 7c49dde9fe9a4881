"""`param()`: a dataclass field that carries the schema metadata the search and the JSON schema read.

Every leaf of the spec is declared with it, so bounds, enums and AutoML flags live next to
the default they describe and there is no second table to keep in step. `spec_leaves()` is the
one walk over the spec tree that validation, path handling, the JSON schema and the search read.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from functools import lru_cache
from typing import Any, Iterator, Sequence

from automl.spec.conditions import parse_math_cond, parse_relation

# Keys of a field's metadata, in the order they appear in the generated schema.
METADATA_KEYS = (
    "description",
    "valid_min",
    "valid_max",
    "valid_options",
    "option_weights",
    "math_cond",
    "depends_on",
    "popular",
    "automl_enabled",
    "automl_default",
    "log_scale",
    "is_path",
    "length",
)


def param(
    default: Any,
    description: str,
    *,
    valid_min: float | None = None,
    valid_max: float | None = None,
    valid_options: Sequence[Any] | None = None,
    option_weights: Sequence[float] | None = None,
    math_cond: str | None = None,
    depends_on: Sequence[str] | None = None,
    popular: bool = False,
    automl_enabled: bool | None = None,
    automl_default: bool = False,
    log_scale: bool = False,
    is_path: bool = False,
    length: int | None = None,
) -> Any:
    """A spec field with its metadata.

    Args:
        default: the default value (lists and dicts are copied per instance).
        description: one or two sentences for the user.
        valid_min, valid_max: inclusive bounds for numbers (and for every item of a number list).
        valid_options: the allowed values (an enum).
        option_weights: sampling weights of `valid_options` for the search (same length).
        math_cond: "/ N" (a multiple of N), "^ 2" (a power of 2) or "> X" / ">= X" (a strict or
            loose lower bound).
        depends_on: relations to other keys: ">= other.key" (this value >= that one) or
            "other.key == value" (this field only matters when that key has that value).
        popular: shown first in generated templates and UIs.
        automl_enabled: True: the search may vary it. False: never (listed as disabled in the
            schema). None: not searchable and not listed.
        automl_default: part of the default search space (needs automl_enabled).
        log_scale: sample on a log scale (needs valid_min > 0).
        is_path: a file or folder; made absolute (from the working directory) when loaded, so
            trials running elsewhere find it.
        length: the exact number of items of a list (e.g. 3 for per-channel statistics).
    """
    if automl_default and not automl_enabled:
        raise ValueError("automl_default needs automl_enabled")
    if log_scale and not (valid_min is not None and valid_min > 0):
        raise ValueError("log_scale needs valid_min > 0")
    if option_weights is not None and (valid_options is None or len(option_weights) != len(valid_options)):
        raise ValueError("option_weights needs valid_options of the same length")
    if math_cond is not None:
        parse_math_cond(math_cond)  # a malformed condition fails where it is declared
    for relation in depends_on or ():
        parse_relation(relation)
    metadata = {
        "description": description,
        "valid_min": valid_min,
        "valid_max": valid_max,
        "valid_options": list(valid_options) if valid_options is not None else None,
        "option_weights": list(option_weights) if option_weights is not None else None,
        "math_cond": math_cond,
        "depends_on": list(depends_on) if depends_on else None,
        "popular": popular,
        "automl_enabled": automl_enabled,
        "automl_default": automl_default,
        "log_scale": log_scale,
        "is_path": is_path,
        "length": length,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, description: str) -> Any:
    """A nested section of the spec (a dataclass field holding another spec dataclass)."""
    return dataclasses.field(default_factory=cls, metadata={"description": description})


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf field of the spec: its dotted key, its type in the reference's names, its metadata."""

    key: str
    kind: str  # int, float, bool, string, categorical, list or collection
    meta: dict
    annotation: Any


@lru_cache(maxsize=None)
def spec_leaves(cls: type) -> tuple[Leaf, ...]:
    """Every leaf field below the spec dataclass `cls`, depth first in declaration order (read-only)."""
    return tuple(_walk(cls, ""))


def _walk(cls: type, prefix: str) -> Iterator[Leaf]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            yield from _walk(annotation, key + ".")
        else:
            yield Leaf(key, value_kind(annotation, f.metadata), dict(f.metadata), annotation)


def section_type(cls: type, name: str) -> type | None:
    """The dataclass of section `name` of `cls`, or None when `name` is a leaf."""
    annotation = typing.get_type_hints(cls)[name]
    return annotation if dataclasses.is_dataclass(annotation) else None


def value_kind(annotation: Any, meta: Any) -> str:
    """The reference's type names: int, float, bool, string, categorical, list, collection."""
    if meta.get("valid_options") is not None and len(meta["valid_options"]) > 1:
        return "categorical"
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin in (list, typing.List):
        return "list"
    if origin in (dict, typing.Dict):
        return "collection"
    return {int: "int", float: "float", bool: "bool", str: "string"}.get(annotation, "string")
