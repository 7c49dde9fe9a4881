"""The two small languages of field metadata, parsed here only.

`math_cond` restricts one value: "/ 8" (a multiple of 8), "^ 2" (a power of 2), "> 0.0" or ">= 1"
(a bound; compact forms such as ">0" too). `depends_on` relates a value to another key:
">= other.key" (this value >= that one) or "other.key == value" (this field only matters when
that key has that value).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

ORDER_OPS = (">", ">=", "<", "<=")


def compare(a: float, op: str, b: float) -> bool:
    """`a op b` for one of ORDER_OPS."""
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


@dataclass(frozen=True)
class MathCond:
    """A parsed `math_cond`: `op` is '/', '^' or one of ORDER_OPS; `operand` is kept as written."""

    op: str
    operand: str
    text: str

    @property
    def number(self) -> float:
        return float(self.operand)

    @property
    def step(self) -> float | None:
        """The N of '/ N' (None for '/ 1', which every value meets)."""
        return self.number if self.op == "/" and self.number != 1 else None

    @property
    def power_of(self) -> int | None:
        """The N of '^ N'."""
        return int(self.number) if self.op == "^" else None

    def holds(self, value: float) -> bool:
        if self.op == "/":
            return value % self.number == 0
        if self.op == "^":
            if value < 1:
                return False
            power = 1
            while power < value:
                power *= self.number
            return power == value
        return compare(value, self.op, self.number)

    def describe(self) -> str:
        """'a multiple of 8', 'a power of 2', 'a value > 0.0'."""
        return {"/": f"a multiple of {self.operand}", "^": f"a power of {self.operand}"}.get(self.op, f"a value {self.text}")


@lru_cache(maxsize=None)
def parse_math_cond(text: str) -> MathCond:
    text = text.strip()
    op, _, operand = text.partition(" ")
    if not operand:  # compact forms such as '>0'
        op = text.rstrip("0123456789.")
        operand = text[len(op):]
    if op not in ("/", "^", *ORDER_OPS):
        raise ValueError(f"math_cond '{text}': expected '/ N', '^ N' or a comparison such as '> 0'")
    return MathCond(op, operand.strip(), text)


def math_cond_holds(cond: str, value: float) -> bool:
    return parse_math_cond(cond).holds(value)


@dataclass(frozen=True)
class Relation:
    """A parsed `depends_on` entry.

    An order ('>= other.key'): this value `op` the other key's. An activation
    ('other.key == value', op '=='): this field only matters when the other key equals `value`
    (`raw` is the value as written, for messages).
    """

    op: str
    other: str
    value: Any = None
    raw: str = ""

    @property
    def is_activation(self) -> bool:
        return self.op == "=="


@lru_cache(maxsize=None)
def parse_relation(text: str) -> Relation:
    if "==" in text:
        other, _, raw = (part.strip() for part in text.partition("=="))
        return Relation("==", other, yaml.safe_load(raw), raw)
    parts = text.split()
    if len(parts) != 2 or parts[0] not in ORDER_OPS:
        raise ValueError(f"depends_on '{text}': expected '>= other.key' or 'other.key == value'")
    return Relation(parts[0], parts[1])
