"""Fixtures shared by the tests (the session set-up, ``TRITON_INTERPRET`` and the doctest namespace, is
in the repository's top-level conftest.py).

``device``: every device the parity matrix runs on, the CPU always and CUDA when one is present
(test ids ``cpu`` / ``cuda``). Tests that take it build their inputs on the CPU from fixed seeds and
move them there, so both devices see the same values.
"""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device under test: ``cpu``, and ``cuda`` when available."""
    return torch.device(request.param)
