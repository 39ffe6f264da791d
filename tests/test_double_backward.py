"""Second derivatives (``create_graph=True``: gradient penalties, Hessian-vector products).

The batched backend (what ``backend="auto"`` picks at training batch sizes) differentiates its
recomputed forward with autograd when the backward itself must be differentiable, so its second
derivatives are exact; the dense and chunked backends do not support them and say so by raising.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgll_loss import functional as MF

from .helpers import skip_without_triton, unit_features

LABELS = [torch.tensor([0, 1, 0, -1, 1]), None, torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])]
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 1, 0, 1]], dtype=torch.bool)
OPTIONS = [
    dict(),
    dict(kl_direction="from_mean", pointwise_target="row_normalized", normalization="rows", match="jaccard"),
    dict(text_mask=MASK, match="overlap", level_weights=[1.0, 0.5, 2.0]),
]


def _leaves():
    images = unit_features(5, 4, dtype=torch.float64, seed=1, requires_grad=True)
    texts = unit_features(3, 5, 4, dtype=torch.float64, seed=2, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    return images, texts, scale, bias


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "released-code-options", "mask-and-weights"])
def test_batched_second_derivatives_pass_gradgradcheck(options):
    def loss(images, texts, scale, bias):
        return MF.mgll_loss(images, texts, scale, bias, labels=LABELS, backend="batched", **options)

    assert torch.autograd.gradgradcheck(loss, _leaves(), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_default_backend_mixed_second_derivative_equals_open_clip_form():
    images, texts, _, _ = _leaves()
    text = texts[0].detach().requires_grad_()

    def clip(i, t):  # open_clip's ClipLoss, written out
        logits, target = 5.0 * i @ t.T, torch.arange(len(i))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def mixed(loss):
        (grad_images,) = torch.autograd.grad(loss, [images], create_graph=True)
        (second,) = torch.autograd.grad(grad_images.sum(), [text])
        return second

    got = mixed(MF.soft_clip_loss(images, text, 5.0))  # backend="auto": batched
    torch.testing.assert_close(got, mixed(clip(images, text)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["dense", "chunked", "triton"])
@pytest.mark.parametrize("penalty", ["gradient only", "gradient and inputs"])
def test_fused_backends_refuse_second_derivatives(backend, penalty):
    """Asked for a differentiable gradient, they raise at once (not later, not a constant gradient)."""
    if backend == "triton":
        skip_without_triton()
    images, texts, scale, bias = _leaves()
    loss = MF.mgll_loss(images, texts, scale, bias, labels=LABELS, backend=backend)
    with pytest.raises(RuntimeError, match=f"backend='{backend}'.*use backend='batched'"):
        (grad_images,) = torch.autograd.grad(loss, [images], create_graph=True)
        total = grad_images.pow(2).sum() + (images.pow(2).sum() if penalty == "gradient and inputs" else 0.0)
        total.backward()
    (first_order,) = torch.autograd.grad(
        MF.mgll_loss(images, texts, scale, bias, labels=LABELS, backend=backend), [images]
    )
    assert torch.isfinite(first_order).all()


def test_batched_second_derivatives_in_float32():
    """What people train with: float32 on CPU, every term on (the point-wise softplus included)."""
    images, texts, scale, bias = (leaf.detach().float().requires_grad_() for leaf in _leaves())
    loss = MF.mgll_loss(images, texts, scale, bias, labels=LABELS)
    (grad_images,) = torch.autograd.grad(loss, [images], create_graph=True)
    grad_images.pow(2).sum().backward()
    images64, texts64, scale64, bias64 = _leaves()
    loss64 = MF.mgll_loss(images64, texts64, scale64, bias64, labels=LABELS)
    (grad64,) = torch.autograd.grad(loss64, [images64], create_graph=True)
    grad64.pow(2).sum().backward()
    for got, want in ((texts.grad, texts64.grad), (scale.grad, scale64.grad), (bias.grad, bias64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
