"""Doctest namespace for the docstring examples in mgll_loss/ (run by pytest --doctest-modules)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    torch.manual_seed(0)
    doctest_namespace["torch"] = torch
