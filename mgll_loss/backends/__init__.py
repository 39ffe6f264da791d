"""Backends compute the loss terms of a :class:`LossProblem`; this module picks one by name.

Rule for ``backend="auto"``: the dense backend (the only one in this version).
"""

from __future__ import annotations

from typing import Callable, Dict

from ..validation import check_choice
from .base import LevelSums, LossProblem, LossRequest
from .dense import dense_level_sums

__all__ = ["BACKEND_NAMES", "LevelSums", "LossProblem", "LossRequest", "check_backend", "resolve_backend"]

Backend = Callable[[LossProblem, LossRequest], LevelSums]

_AVAILABLE: Dict[str, Backend] = {"dense": dense_level_sums}
_PLANNED = ("chunked", "triton")
BACKEND_NAMES = ("auto", *_AVAILABLE, *_PLANNED)


def check_backend(name: str) -> str:
    """Return ``name`` if it is a backend that can run here, else raise ``ValueError``."""
    check_choice("backend", name, BACKEND_NAMES)
    if name in _PLANNED:
        available = ", ".join(repr(n) for n in ("auto", *_AVAILABLE))
        raise ValueError(f"backend: {name!r} is not available in this version of mgll-loss; available: {available}")
    return name


def resolve_backend(name: str) -> Backend:
    """Return the backend function for ``name`` ("auto": the dense backend)."""
    check_backend(name)
    return _AVAILABLE["dense" if name == "auto" else name]
