"""Extreme logits and low-precision inputs: finite losses and gradients, fp32 accumulation."""

from __future__ import annotations

import re

import pytest
import torch

from mgll_loss import MGLLLoss, functional
from mgll_loss.validation import MAX_LOGIT_SCALE

from .helpers import level_labels, skip_without_triton, unit_features

B, D, G = 12, 8, 3


@pytest.mark.parametrize("scale", [100.0, 1e4])
@pytest.mark.parametrize("bias", [None, 100.0, -1e4])
@pytest.mark.parametrize("kl_direction", ["to_mean", "from_mean"])
def test_extreme_logits_give_finite_losses_and_gradients(scale, bias, kl_direction):
    images = unit_features(B, D, seed=3, requires_grad=True)
    texts = unit_features(G, B, D, seed=4, requires_grad=True)
    mask = torch.ones(G, B, dtype=torch.bool)
    mask[1, :3] = False
    terms = MGLLLoss(kl_direction=kl_direction)(
        images, texts, torch.tensor(scale), bias, labels=level_labels(B), text_mask=mask, output_dict=True
    )
    total = sum(terms.values())
    total.backward()
    assert all(torch.isfinite(v) for v in terms.values()), terms
    assert torch.isfinite(images.grad).all() and torch.isfinite(texts.grad).all()


def test_extreme_logits_match_float64():
    images = unit_features(B, D, seed=5, dtype=torch.float64)
    texts = unit_features(G, B, D, seed=6, dtype=torch.float64)
    expected = functional.mgll_loss(images, texts, 1e4, labels=level_labels(B), output_dict=True)
    got = functional.mgll_loss(images.float(), texts.float(), 1e4, labels=level_labels(B), output_dict=True)
    for name in expected:
        # logits of size 1e4 in float32 carry an absolute error of ~1e4 * 2^-24 per entry
        torch.testing.assert_close(got[name].double(), expected[name], rtol=1e-4, atol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    images = unit_features(B, D, seed=7, dtype=dtype, requires_grad=True)
    texts = unit_features(G, B, D, seed=8, dtype=dtype, requires_grad=True)
    loss = MGLLLoss()(images, texts, torch.tensor(100.0, dtype=dtype), labels=level_labels(B))
    assert loss.dtype == torch.float32
    loss.backward()
    assert images.grad.dtype == dtype and torch.isfinite(images.grad.float()).all()
    reference = MGLLLoss()(images.detach().double(), texts.detach().double(), 100.0, labels=level_labels(B))
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-5)


def test_float64_inputs_compute_in_float64():
    images = unit_features(B, D, seed=9, dtype=torch.float64)
    texts = unit_features(G, B, D, seed=10, dtype=torch.float64)
    assert MGLLLoss()(images, texts, 10.0).dtype == torch.float64


def test_all_texts_of_a_level_missing_gives_finite_zero_terms_for_that_level():
    images = unit_features(B, D, seed=11, requires_grad=True)
    texts = unit_features(2, B, D, seed=12)
    mask = torch.ones(2, B, dtype=torch.bool)
    mask[1] = False
    loss = MGLLLoss(smooth_kl_weight=0.0, level_weights=[0.0, 1.0])(images, texts, 10.0, text_mask=mask)
    assert float(loss.detach()) == 0.0
    total = MGLLLoss()(images, texts, 10.0, text_mask=mask)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(images.grad).all()


@pytest.mark.parametrize(
    "scale", [float("inf"), float("nan"), -10.0, 0.0, torch.tensor(float("inf")), torch.tensor(-1.0)]
)
def test_non_finite_or_non_positive_logit_scale_is_rejected(scale):
    images = unit_features(B, D, seed=13)
    with pytest.raises(ValueError, match="logit_scale: expected a finite positive number"):
        MGLLLoss()(images, unit_features(G, B, D, seed=14), scale)


@pytest.mark.parametrize("scale", [1e30, 1.0001e4, torch.tensor(1e30), torch.tensor(2e4, dtype=torch.float64)])
def test_logit_scale_beyond_the_documented_bound_is_rejected(scale):
    # 1e30 is what an exponentiated-twice log-scale looks like; the bound is MAX_LOGIT_SCALE = 1e4, the
    # logit range the losses promise finite results for (open_clip clamps the scale at 100).
    images = unit_features(B, D, seed=13)
    message = "logit_scale: expected a finite positive number <= 10000 (the logit scale is already exponentiated"
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        MGLLLoss()(images, unit_features(G, B, D, seed=14), scale)
    assert "clamp_logit_scale" in str(error.value)


def test_logit_scale_at_the_bound_is_accepted_and_finite():
    images = unit_features(B, D, seed=13, requires_grad=True)
    scale = torch.tensor(MAX_LOGIT_SCALE, requires_grad=True)
    loss = MGLLLoss()(images, unit_features(G, B, D, seed=14), scale)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(images.grad).all() and torch.isfinite(scale.grad)


@pytest.mark.parametrize("bias", [float("nan"), float("-inf"), torch.tensor(float("nan"))])
def test_non_finite_logit_bias_is_rejected(bias):
    images = unit_features(B, D, seed=15)
    with pytest.raises(ValueError, match="logit_bias: expected a finite number"):
        MGLLLoss()(images, unit_features(G, B, D, seed=16), 10.0, bias)


@pytest.mark.parametrize("backend", ["batched", "dense", "chunked"])
def test_autocast_changes_nothing_inside_the_loss(backend):
    # Under torch.autocast the loss still computes in fp32 (the backends' compute dtype): the same
    # value and gradients as outside autocast, and a backward that works (the dense backend's
    # hand-written backward used to mix bf16 kept logits with fp32 features).
    torch.manual_seed(0)
    images = unit_features(10, 16).to(torch.bfloat16)
    texts = torch.stack([unit_features(10, 16) for _ in range(3)]).to(torch.bfloat16)
    labels = [torch.tensor([0, 1] * 5), None, torch.tensor([2] * 5 + [3] * 5)]
    results = []
    for autocast in (True, False):
        leaves = images.clone().requires_grad_(), texts.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = MGLLLoss(backend=backend)(*leaves, 10.0, -2.0, labels=labels)
        loss.backward()
        results.append((loss, leaves[0].grad, leaves[1].grad))
    (loss_on, *grads_on), (loss_off, *grads_off) = results
    assert loss_on.dtype == torch.float32 and torch.equal(loss_on, loss_off)
    for on, off in zip(grads_on, grads_off, strict=True):
        torch.testing.assert_close(on, off, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_sum_is_exact_to_rounding_over_the_whole_range(dtype):
    from mgll_loss.backends.softplus import softplus_sum

    finite = torch.finfo(dtype)
    z = torch.cat([torch.linspace(-200, 200, 4001), torch.tensor([finite.min, -1e30, -60.0, 0.0, 60.0, 1e30])])
    z = z.to(dtype)
    expected = torch.nn.functional.softplus(z.double(), threshold=1000.0)  # log1p(e^z) in float64 everywhere
    values = torch.stack([softplus_sum(v) for v in z])
    assert values.dtype == dtype
    torch.testing.assert_close(values.double(), expected, rtol=finite.eps, atol=finite.tiny)
    grid = z[:4000].view(40, 100)
    torch.testing.assert_close(
        softplus_sum(grid, 1).double(), expected[:4000].view(40, 100).sum(1), rtol=4 * finite.eps, atol=finite.tiny
    )
    assert softplus_sum(grid).shape == ()


@pytest.mark.parametrize("backend", ["batched", "dense", "chunked", "triton"])
@pytest.mark.parametrize("bias_value", [-14.0, -8.0])
def test_pointwise_sum_of_mostly_negative_pairs_keeps_float32_accuracy(backend, bias_value):
    # a bias of -14 (-8) puts every logit near it, where softplus ~ 1e-6 (3e-4): the sum must keep its digits
    if backend == "triton":
        skip_without_triton()
    images = unit_features(32, D, seed=9, dtype=torch.float64)
    texts = unit_features(32, D, seed=10, dtype=torch.float64)
    bias, targets = torch.tensor(bias_value), torch.zeros(32, 32)
    want = functional.pointwise_loss(images, texts, 0.5, bias.double(), targets=targets.double(), backend=backend)
    got = functional.pointwise_loss(images.float(), texts.float(), 0.5, bias, targets=targets, backend=backend)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kl_direction", ["to_mean", "from_mean"])
@pytest.mark.parametrize("masked", [False, True])
def test_smooth_kl_where_every_level_underflows_matches_the_logsumexp_form(kl_direction, masked):
    # at a scale of 1e4 most probabilities underflow to 0 in every level (float64 too): the batched
    # backend's log m from the clamped mean must give what the dense backend's logsumexp gives
    images = unit_features(B, D, seed=7, dtype=torch.float64, requires_grad=True)
    texts = unit_features(G, B, D, seed=8, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(G, B, dtype=torch.bool)
    if masked:
        mask[0, 2] = mask[2, 7] = False
    results = []
    for backend in ("batched", "dense"):
        loss = functional.smooth_kl_loss(images, texts, 1e4, text_mask=mask, kl_direction=kl_direction, backend=backend)
        results.append((loss, torch.autograd.grad(loss, (images, texts))))
    (got, got_grads), (want, want_grads) = results
    assert torch.isfinite(got) and got > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
