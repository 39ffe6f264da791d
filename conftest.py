"""Test session set-up: Triton kernels run on CPU tensors through the interpreter when there is no
GPU, and the doctest namespace. (The example engine, ``examples/mgll_examples``, is importable
through ``pythonpath`` in pyproject.toml.)

``TRITON_INTERPRET`` must be set before the kernels are first imported (Triton reads it when a
kernel is decorated). CI has no GPU, so the triton backend is tested this way; on a CUDA machine
the kernels run natively (set ``TRITON_INTERPRET=1`` yourself to test the interpreter there).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    torch.manual_seed(0)
    doctest_namespace["torch"] = torch
