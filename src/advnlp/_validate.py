"""Argument checks shared by the methods and the attacks.

Each returns the value in its canonical type or raises with a message that names
the argument, the rule and the value it got. Methods call them in ``__init__``
before anything is registered on the model.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence


def positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite real number ``> 0`` (``>= 0`` with ``allow_zero``), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def integer(name: str, value, minimum: int = 1) -> int:
    """An integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def fraction(name: str, value) -> float:
    """A number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
    return float(value)


def in_range(name: str, value, low: float, high: float, what: str = "a number") -> float:
    """A number in [low, high]; ``what`` says what it is in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise ValueError(f"{name} is {what} in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def boolean(name: str, value) -> bool:
    """``True`` or ``False`` itself: a string ``'no'``, a number or ``None`` is refused
    (``bool('no')`` is True, so coercing would turn an option on that was meant off)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def strings(name: str, value, example: str) -> frozenset:
    """An iterable of strings (set, list, tuple, frozenset) as a frozenset. A bare string
    would be its characters, so it is refused, as is None; ``example`` shows the fix."""
    if isinstance(value, (str, bytes)) or value is None or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a collection of strings, e.g. {example}, or an "
                        f"empty set() for none; got {value!r}")
    value = frozenset(value)
    wrong = next((v for v in value if not isinstance(v, str)), None)
    if wrong is not None:
        raise TypeError(f"{name} must hold strings only, got {wrong!r}")
    return value


def choice(name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def output_target(target: str, method: str) -> None:
    """Methods whose perturbation lives on the embedding output only."""
    if target != "output":
        raise ValueError(f"{method} perturbs the embedding output; use target='output' (the default)")
