"""The unit-norm check of the loss modules: sampled on the first call and every N calls after, a warning
once per instance, never a host read while compiling, and on CUDA a read deferred until the copy lands."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from mgll_loss import MGLLLoss, PointwiseLoss, SoftCLIPLoss, loss_base
from mgll_loss.devices import accelerator_policy
from mgll_loss.norm_check import NORM_CHECK_EVERY, UnitNormCheck

from .helpers import unit_features


def _caught(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [(str(w.message), w.filename) for w in caught if issubclass(w.category, UserWarning)]


def test_features_far_from_unit_norm_warn_once_per_loss_instance():
    images, texts = unit_features(4, 6), unit_features(2, 4, 6)
    loss = MGLLLoss()
    first = _caught(lambda: loss(20 * images, texts, 10.0))
    assert len(first) == 1 and first[0][0].startswith("image_features: L2 norms range from 20 to 20")
    assert "normalize" in first[0][0] and first[0][1] == __file__  # points at the caller's line
    for _ in range(2 * NORM_CHECK_EVERY):
        assert _caught(lambda: loss(20 * images, texts, 10.0)) == []  # once per instance
    assert len(_caught(lambda: SoftCLIPLoss()(images, 3 * texts[0], 10.0))) == 1  # a new instance checks again
    assert _caught(lambda: PointwiseLoss()(images.half(), texts[0].half(), 10.0)) == []  # rounding is no reason
    assert _caught(lambda: MGLLLoss()(images, list(texts), 10.0)) == []


def test_features_that_drift_off_unit_norm_later_are_warned_at_the_next_sample():
    # a model that stops normalising after a while (a refactor drops F.normalize) is still caught
    images, texts = unit_features(4, 6), unit_features(2, 4, 6)
    loss = MGLLLoss()
    assert _caught(lambda: loss(images, texts, 10.0)) == []  # call 0: sampled, fine
    for _ in range(1, NORM_CHECK_EVERY):
        assert _caught(lambda: loss(images, 5 * texts, 10.0)) == []  # not sampled
    warned = _caught(lambda: loss(images, 5 * texts, 10.0))  # call NORM_CHECK_EVERY: sampled
    assert len(warned) == 1 and warned[0][0].startswith("text_features: L2 norms range from 5 to 5")


def test_every_zero_turns_the_check_off():
    loss = SoftCLIPLoss()
    loss.norm_check.every = 0
    assert _caught(lambda: loss(20 * unit_features(4, 6), unit_features(4, 6), 10.0)) == []


def test_no_sample_while_compiling(monkeypatch):
    images, texts = unit_features(4, 6), unit_features(2, 4, 6)
    loss = MGLLLoss()
    monkeypatch.setattr(loss_base, "_is_compiling", lambda: True)
    assert _caught(lambda: loss(20 * images, texts, 10.0)) == []
    assert loss.norm_check.calls == 0
    monkeypatch.setattr(loss_base, "_is_compiling", lambda: False)
    assert len(_caught(lambda: loss(20 * images, texts, 10.0))) == 1


def test_a_sample_off_the_host_is_read_on_a_later_call_without_waiting(monkeypatch):
    # the CUDA form: the extremes are copied asynchronously and read once the copy has landed; until
    # then calls go on without a synchronisation. Forced here on CPU tensors, with a fake CUDA event.
    class Event:
        done = False

        def query(self):
            return self.done

    check = UnitNormCheck(every=3)
    images = 2 * unit_features(4, 6)
    with accelerator_policy():
        assert _caught(lambda: check(images, unit_features(4, 6), stacklevel=1)) == []  # sampled, in flight
    names, host, _ = check._pending
    event = Event()
    check._pending = (names, host, event)
    assert _caught(lambda: check(images, unit_features(4, 6), stacklevel=1)) == []  # not landed: no wait
    event.done = True
    warned = _caught(lambda: check(images, unit_features(4, 6), stacklevel=1))
    assert len(warned) == 1 and warned[0][0].startswith("image_features: L2 norms range from 2 to 2")
    assert check.warned and check._pending is None


def test_a_copy_of_a_loss_forgets_a_sample_in_flight():
    loss = MGLLLoss()
    loss.norm_check._pending = (["image_features"], torch.tensor([[2.0, 2.0]]), object())
    copied = copy.deepcopy(loss)
    assert copied.norm_check._pending is None and loss.norm_check._pending is not None


def test_placeholder_rows_of_absent_texts_do_not_warn():
    # zero rows for missing texts are what the docs suggest; their norms are not the model's
    images, texts = unit_features(4, 6), unit_features(3, 4, 6)
    mask = torch.ones(3, 4, dtype=torch.bool)
    texts[1, 2] = 0.0
    mask[1, 2] = False
    assert _caught(lambda: MGLLLoss()(images, texts, 10.0, text_mask=mask)) == []
    assert _caught(lambda: MGLLLoss()(images, list(texts), 10.0, text_mask=list(mask))) == []
    assert _caught(lambda: MGLLLoss()(images, list(texts), 10.0, text_mask=mask)) == []
    assert _caught(lambda: SoftCLIPLoss()(images, texts[1], 10.0, text_mask=mask[1])) == []
    # a present text with a zero row still warns
    assert len(_caught(lambda: MGLLLoss()(images, texts, 10.0))) == 1
    # a mask that does not fit is ignored by the norm check; validation refuses it, naming it
    with pytest.raises(ValueError, match="text_mask"):
        MGLLLoss()(images, texts, 10.0, text_mask=mask[:2])
