"""``torch.compile(MGLLLoss(...), fullgraph=True)``: one graph, equal to eager (values and gradients).

Compiling is slow on CPU, so each test covers several label kinds at a time: level 0 class ids,
level 1 multi-hot labels, level 2 an explicit target matrix; with a logit bias and a text mask
(the fast test), and without them too (the slow tests, every match mode). The default backend ("auto") must pick
the batched backend at these sizes, which is what makes the single graph possible.
"""

from __future__ import annotations

import pytest
import torch

from mgll_loss import MGLLLoss
from mgll_loss.devices import accelerator_policy

from .helpers import unit_features

B, D = 8, 16


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    images = unit_features(B, D, generator=gen)
    texts = unit_features(3, B, D, generator=gen)
    labels = [torch.tensor([0, 1, 0, 2, 1, 0, 3, 2]), torch.rand(B, 4, generator=gen) < 0.4, None]
    targets = [None, None, (torch.rand(B, B, generator=gen) < 0.3).float()]
    mask = torch.rand(3, B, generator=gen) > 0.2
    return images, texts, labels, targets, mask


def _run(loss, images, texts, scale, bias, **call):
    leaves = [images.clone().requires_grad_(), texts.clone().requires_grad_(), scale.clone().requires_grad_()]
    if bias is not None:
        leaves.append(bias.clone().requires_grad_())
    out = loss(*leaves[:3], leaves[3] if bias is not None else None, output_dict=True, **call)
    sum(out.values()).backward()
    return out, [leaf.grad for leaf in leaves]


def _assert_compiled_equals_eager(match: str, seed: int, variants: tuple[bool, ...], **options) -> None:
    """For each variant, with (True) or without (False) a bias and a text mask."""
    images, texts, labels, targets, mask = _inputs(seed)
    torch._dynamo.reset()  # every test's losses share MGLLLoss.forward's cache of compiled graphs (8 at most)
    loss = MGLLLoss(match=match, level_weights=[1.0, 0.5, 2.0], **options)
    compiled = torch.compile(loss, fullgraph=True)
    scale, bias = torch.tensor(14.3), torch.tensor(-2.5)
    for call_bias, text_mask in ((bias, mask) if variant else (None, None) for variant in variants):
        call = dict(labels=labels, targets=targets, text_mask=text_mask)
        want, want_grads = _run(loss, images, texts, scale, call_bias, **call)
        got, got_grads = _run(compiled, images, texts, scale, call_bias, **call)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # the value checks stay on in the graph, as asynchronous asserts (no host read, no graph break)
    with pytest.raises(RuntimeError, match="logit_scale: expected a finite positive number <= 10000"):
        compiled(images, texts, torch.tensor(1e30), bias, labels=labels, targets=targets, text_mask=mask)


def test_fullgraph_compile_equals_eager_with_bias_and_mask():
    _assert_compiled_equals_eager("exact", seed=0, variants=(True,))


@pytest.mark.slow
@pytest.mark.parametrize("match", ["exact", "overlap", "jaccard"])
def test_fullgraph_compile_equals_eager_every_match(match):
    _assert_compiled_equals_eager(match, seed=1, variants=(False, True))


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(backend="dense"), dict(backend="chunked", chunk_size=3)], ids=str)
def test_fullgraph_compile_of_the_fused_backends_under_the_cuda_policy(options):
    """With the policy of CUDA tensors (static shapes, no host reads) dense and chunked compile as one graph too."""
    with accelerator_policy():
        _assert_compiled_equals_eager("overlap", seed=2, variants=(True,), **options)


def test_fullgraph_compile_with_a_python_number_scale_that_changes():
    # a temperature schedule: the second distinct number makes dynamo treat it as symbolic (a recompile)
    images, texts, labels, _, _ = _inputs(2)
    torch._dynamo.reset()
    loss = MGLLLoss()
    compiled = torch.compile(loss, fullgraph=True)
    for scale in (10.0, 12.0, 14.0):
        torch.testing.assert_close(
            compiled(images, texts, scale, labels=labels), loss(images, texts, scale, labels=labels)
        )
    for bad in (-1.0, 1e30):  # the bound MAX_LOGIT_SCALE holds for a symbolic number too
        with pytest.raises(RuntimeError, match="logit_scale: expected a finite positive number <= 10000"):
            compiled(images, texts, bad, labels=labels)


def test_value_checks_after_a_recompile_with_dynamic_shapes():
    # a new batch size makes dynamo trace sizes symbolically; the checks' messages must still build
    images, texts, labels, _, _ = _inputs(3)
    torch._dynamo.reset()
    compiled = torch.compile(MGLLLoss(), fullgraph=True)
    compiled(images, texts, 10.0, labels=labels)
    compiled(images[:6], texts[:, :6], 10.0, labels=[labels[0][:6], labels[1][:6], None])
    bad = [torch.full((5, 3), 2), None, None]
    with pytest.raises(RuntimeError, match=r"labels\[0\]: multi-hot labels \[.*\] must contain only 0 and 1"):
        compiled(images[:5], texts[:, :5], 10.0, labels=bad)


@pytest.mark.parametrize("fullgraph", [False, True])
def test_shape_errors_under_compile_carry_the_eager_message(fullgraph):
    # while tracing, sizes are written "?" (formatting a symbolic size would specialise the graph);
    # with fullgraph=True dynamo reports the ValueError raised while tracing as its Unsupported (a RuntimeError)
    images, texts, labels, _, _ = _inputs(4)
    torch._dynamo.reset()
    compiled = torch.compile(MGLLLoss(), fullgraph=fullgraph)
    message = r"text_features: expected shape \[G, N, D\] .*D=16 \(image_features is \[\?, \?\]\), got \[\?, \?, \?\]"
    with pytest.raises(RuntimeError if fullgraph else ValueError, match=message):
        compiled(images, texts[..., :15], 10.0, labels=labels)
