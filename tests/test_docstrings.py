"""Shared argument descriptions (:mod:`mgll_loss.docstrings`) land in every docstring that names them."""

from __future__ import annotations

import inspect

import pytest

import mgll_loss
from mgll_loss import functional
from mgll_loss.docstrings import FRAGMENTS, shared_args

PUBLIC = [
    functional.soft_clip_loss,
    functional.pointwise_loss,
    functional.smooth_kl_loss,
    functional.mgll_loss,
    mgll_loss.SoftCLIPLoss,
    mgll_loss.PointwiseLoss,
    mgll_loss.SmoothKLLoss,
    mgll_loss.MGLLLoss,
]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_backend_options_are_written_out_once_filled_in(obj):
    doc = inspect.getdoc(obj)
    assert "%(" not in doc
    for line in FRAGMENTS["backend_options"].splitlines():
        assert line.strip() in doc
    # every option of the signature is described
    for name in ("backend", "chunk_size", "local_loss", "gather_with_grad"):
        assert f"{name}:" in doc


def test_fragment_takes_the_indent_of_its_marker():
    def documented():
        """Summary.

        Args:
            %(match)s
        """

    doc = shared_args(documented).__doc__
    assert "\n            match: how multi-hot labels" in doc


def test_unknown_fragment_raises():
    def documented():
        """Summary.

        %(no_such_fragment)s
        """

    with pytest.raises(KeyError, match="no_such_fragment"):
        shared_args(documented)


def test_missing_docstring_is_left_alone():
    def undocumented():
        pass

    assert shared_args(undocumented).__doc__ is None
