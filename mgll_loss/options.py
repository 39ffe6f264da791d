"""Checks of the loss options: choices, flags and weights (the tensor inputs are checked in :mod:`.validation`).

Each raises a ``TypeError`` or ``ValueError`` that names the option, what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any, overload

from torch import Tensor

MATCH_MODES = ("exact", "overlap", "jaccard")
NORMALIZATIONS = ("pairs", "rows")
POINTWISE_TARGETS = ("mask", "row_normalized")
KL_DIRECTIONS = ("to_mean", "from_mean")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def check_flag(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ``TypeError`` (a string such as "no" is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def check_weight(name: str, value: Any) -> float:
    """Return a finite, non-negative weight as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a non-negative number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite non-negative number, got {value}")
    return value


def check_term_weights(
    soft_clip_weight: Any, pointwise_weight: Any, smooth_kl_weight: Any
) -> tuple[float, float, float]:
    """Return the three term weights of MGLL (each :func:`check_weight`); at least one must be positive."""
    names = ("soft_clip_weight", "pointwise_weight", "smooth_kl_weight")
    weights = (
        check_weight(names[0], soft_clip_weight),
        check_weight(names[1], pointwise_weight),
        check_weight(names[2], smooth_kl_weight),
    )
    if not any(weights):
        raise ValueError(f"{', '.join(names)}: expected at least one positive weight, got {list(weights)}")
    return weights


@overload
def check_level_weights(level_weights: Sequence[Any] | Tensor | None, num_levels: int) -> tuple[float, ...]: ...
@overload
def check_level_weights(level_weights: Sequence[Any] | Tensor | None, num_levels: None) -> tuple[float, ...] | None: ...
def check_level_weights(
    level_weights: Sequence[Any] | Tensor | None, num_levels: int | None
) -> tuple[float, ...] | None:
    """Return one non-negative weight per level (all 1 when ``level_weights`` is None).

    With ``num_levels`` None (G not known yet) only the values are checked, and None stays None.
    """
    if level_weights is None:
        return None if num_levels is None else (1.0,) * num_levels
    if isinstance(level_weights, Tensor):
        if level_weights.requires_grad:
            raise TypeError(
                "level_weights: expected constant weights, got a tensor that requires grad (the level weights "
                "are constants of the loss and would get no gradient)"
            )
        level_weights = level_weights.tolist()
    if not isinstance(level_weights, Sequence) or isinstance(level_weights, str):
        raise TypeError(
            f"level_weights: expected a sequence of numbers (one per level), got {type(level_weights).__name__}"
        )
    if num_levels is not None and len(level_weights) != num_levels:
        raise ValueError(
            f"level_weights: expected {num_levels} weights (one per level, G={num_levels}), got {len(level_weights)}"
        )
    return tuple(check_weight(f"level_weights[{g}]", w) for g, w in enumerate(level_weights))
