"""Which device policy a tensor gets: the host-read-free one of accelerators, or the CPU one.

On CPU tensors, reading a value on the host costs nothing, so value checks raise at once and the
backends may use value-dependent tactics (see :mod:`mgll_loss.backends.policy`). On accelerators
(CUDA) every host read is a synchronisation, so the checks become asynchronous asserts and the
backends keep every shape static.

:func:`accelerator_policy` is **for tests**: inside it, CPU tensors get the accelerator policy,
so that a CPU-only test suite can prove what a GPU run would do (no host reads, operator counts
that do not grow with the batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["accelerator_policy", "on_accelerator"]

_SIMULATED = [False]
"""Set inside :func:`accelerator_policy`. A module-level flag, not a ``ContextVar``: torch.compile
of torch 2.9 (the floor) cannot trace ``ContextVar.get``; it reads a module-level value as a guard."""


def on_accelerator(device: torch.device) -> bool:
    """True when tensors on ``device`` follow the accelerator policy (not CPU, or inside :func:`accelerator_policy`)."""
    return device.type != "cpu" or _SIMULATED[0]


@contextmanager
def accelerator_policy() -> Iterator[None]:
    """For tests: CPU tensors follow the accelerator (CUDA) policy inside this context.

    Value checks take their asynchronous-assert form and the backends their static-shape,
    few-launch tactics, as they would on a GPU.

    Example:
        >>> with accelerator_policy():
        ...     on_accelerator(torch.device("cpu"))
        True
        >>> on_accelerator(torch.device("cpu"))
        False
    """
    before = _SIMULATED[0]
    _SIMULATED[0] = True
    try:
        yield
    finally:
        _SIMULATED[0] = before
