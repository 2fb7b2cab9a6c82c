"""One training parameter's rule: its JSON type, its bounds or choices, its default (see domain/frameworks.py).

`Param.check(value)` returns why `value` is wrong, or None. Types are strict: an integer parameter takes a JSON
integer (not a float, not a boolean), a number takes a finite integer or float, a flag takes a JSON boolean, a
choice takes one of its strings exactly, an integer list takes a list of integers. Messages never echo more
than a short prefix of what was sent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    kind: str  # "int" | "float" | "bool" | "choice" | "int_list"
    default: Any = None  # None: the library's own default (the key is only passed on when given); lists as tuples
    low: float | None = None  # bounds of the value (of each item for "int_list")
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    choices: tuple[str, ...] = ()
    max_items: int = 0  # "int_list" only

    def check(self, value: Any) -> str | None:
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {_type(value)}"
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return None
            got = repr(value[:40]) if isinstance(value, str) else _type(value)
            return f"must be one of {', '.join(self.choices)}; got {got}"
        if self.kind == "int_list":
            if not isinstance(value, list) or len(value) > self.max_items:
                return f"must be a list of at most {self.max_items} integers"
            for i, item in enumerate(value):
                if reason := self._number(item, integral=True):
                    return f"item {i}: {reason}"
            return None
        return self._number(value, integral=self.kind == "int")

    def _number(self, value: Any, integral: bool) -> str | None:
        if integral and (isinstance(value, bool) or not isinstance(value, int)):
            return f"must be an integer, got {_type(value)}"
        if not integral and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"must be a number, got {_type(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        if low_ok and (self.high is None or value <= self.high):
            return None
        shown = value if abs(value) < 1e12 else f"{value:.3g}"
        return f"must be {'>' if self.low_open else '>='} {_num(self.low)} and <= {_num(self.high)}, got {shown}"


def describe(param: Param) -> str:
    """`param` in words for documents: "integer 1..20000, default 100"."""
    low = "any" if param.low is None else f"{'>' if param.low_open else ''}{_num(param.low)}"
    bounds = f"{low}..{_num(param.high)}"
    what = {"int": f"integer {bounds}", "float": f"number {bounds}", "bool": "boolean",
            "choice": " | ".join(param.choices),
            "int_list": f"list of at most {param.max_items} integers {bounds}"}[param.kind]
    if param.default is None:
        return what
    return f"{what}, default {list(param.default) if isinstance(param.default, tuple) else param.default}"


def integer(low: int, high: int, default: int | None = None) -> Param:
    return Param("int", default, low, high)


def number(low: float, high: float, low_open: bool = False, default: float | None = None) -> Param:
    return Param("float", default, low, high, low_open)


def flag(default: bool | None = None) -> Param:
    return Param("bool", default)


def choice(*options: str, default: str | None = None) -> Param:
    return Param("choice", default, choices=options)


def int_list(max_items: int, low: int, high: int, default: tuple[int, ...] | None = None) -> Param:
    """A list of at most `max_items` integers in [low, high]; the default is a tuple (immutable), resolved
    params hold a list."""
    return Param("int_list", default, low, high, max_items=max_items)


def _type(value: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _num(x: float | None) -> str:
    return "any" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))
