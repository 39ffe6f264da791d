"""Test session set-up: Triton kernels run on CPU tensors through the interpreter, the example
engine (``examples/mgll_examples``) is importable, and the doctest namespace.

``TRITON_INTERPRET`` must be set before the kernels are first imported (Triton reads it when a
kernel is decorated); CI has no GPU, so the triton backend is tested this way.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent / "examples"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    torch.manual_seed(0)
    doctest_namespace["torch"] = torch
