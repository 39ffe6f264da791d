"""nn.Module wrappers: equal to the functional API, dict outputs, options, torch.compile."""

from __future__ import annotations

import pytest
import torch

from mgll_loss import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss, functional

from .helpers import class_ids, level_labels, unit_features

B, D, G = 9, 6, 3


@pytest.fixture
def batch():
    images = unit_features(B, D, seed=1)
    texts = unit_features(G, B, D, seed=2)
    return images, texts, torch.tensor(12.0), torch.tensor(-3.0)


@pytest.mark.parametrize("match", ["exact", "overlap", "jaccard"])
def test_soft_clip_module_equals_functional(batch, match):
    images, texts, scale, bias = batch
    labels = level_labels(B)[1]
    module = SoftCLIPLoss(match=match)(images, texts[0], scale, bias, labels=labels)
    plain = functional.soft_clip_loss(images, texts[0], scale, bias, labels=labels, match=match)
    assert torch.equal(module, plain)


@pytest.mark.parametrize("normalization", ["pairs", "rows"])
@pytest.mark.parametrize("pointwise_target", ["mask", "row_normalized"])
def test_pointwise_module_equals_functional(batch, normalization, pointwise_target):
    images, texts, scale, bias = batch
    options = dict(normalization=normalization, pointwise_target=pointwise_target)
    module = PointwiseLoss(**options)(images, texts[0], scale, bias, labels=class_ids(B, 3))
    plain = functional.pointwise_loss(images, texts[0], scale, bias, labels=class_ids(B, 3), **options)
    assert torch.equal(module, plain)


@pytest.mark.parametrize("kl_direction", ["to_mean", "from_mean"])
def test_smooth_kl_module_equals_functional(batch, kl_direction):
    images, texts, scale, bias = batch
    module = SmoothKLLoss(kl_direction=kl_direction)(images, texts, scale, bias, labels=level_labels(B))
    assert torch.equal(module, functional.smooth_kl_loss(images, texts, scale, bias, kl_direction=kl_direction))


def test_mgll_module_equals_functional_and_dict_sums_to_total(batch):
    images, texts, scale, bias = batch
    options = dict(
        soft_clip_weight=0.3,
        pointwise_weight=2.0,
        smooth_kl_weight=0.7,
        level_weights=[1.0, 0.5, 2.0],
        match="jaccard",
        normalization="rows",
        pointwise_target="row_normalized",
        kl_direction="from_mean",
    )
    loss = MGLLLoss(**options)
    terms = loss(images, texts, scale, bias, labels=level_labels(B), output_dict=True)
    assert set(terms) == {"soft_clip_loss", "pointwise_loss", "smooth_kl_loss"}
    total = loss(images, texts, scale, bias, labels=level_labels(B))
    torch.testing.assert_close(sum(terms.values()), total)
    assert torch.equal(total, functional.mgll_loss(images, texts, scale, bias, labels=level_labels(B), **options))


def test_output_dict_keys_of_single_term_losses(batch):
    images, texts, scale, _ = batch
    assert list(SoftCLIPLoss()(images, texts[0], scale, output_dict=True)) == ["soft_clip_loss"]
    assert list(PointwiseLoss()(images, texts[0], scale, output_dict=True)) == ["pointwise_loss"]
    assert list(SmoothKLLoss()(images, texts, scale, output_dict=True)) == ["smooth_kl_loss"]


def test_mgll_weights_scale_each_term(batch):
    images, texts, scale, bias = batch
    unit = MGLLLoss(soft_clip_weight=1.0, pointwise_weight=1.0, smooth_kl_weight=1.0)(
        images, texts, scale, bias, output_dict=True
    )
    weighted = MGLLLoss(soft_clip_weight=0.25, pointwise_weight=3.0, smooth_kl_weight=0.0)(
        images, texts, scale, bias, output_dict=True
    )
    torch.testing.assert_close(weighted["soft_clip_loss"], 0.25 * unit["soft_clip_loss"])
    torch.testing.assert_close(weighted["pointwise_loss"], 3.0 * unit["pointwise_loss"])
    assert float(weighted["smooth_kl_loss"]) == 0.0


def test_level_weight_zero_equals_dropping_the_level_from_per_level_terms(batch):
    images, texts, scale, bias = batch
    labels = level_labels(B)
    dropped = MGLLLoss(level_weights=[1.0, 0.0, 1.0], smooth_kl_weight=0.0)(images, texts, scale, bias, labels=labels)
    two_levels = MGLLLoss(smooth_kl_weight=0.0)(images, texts[[0, 2]], scale, bias, labels=[labels[0], labels[2]])
    torch.testing.assert_close(dropped, two_levels)


def test_mgll_with_one_level_has_zero_smooth_kl_and_equals_the_sum_of_its_terms(batch):
    images, texts, scale, bias = batch
    terms = MGLLLoss()(images, texts[:1], scale, bias, output_dict=True)
    assert float(terms["smooth_kl_loss"]) == 0.0
    torch.testing.assert_close(terms["soft_clip_loss"], 0.5 * functional.soft_clip_loss(images, texts[0], scale, bias))
    torch.testing.assert_close(terms["pointwise_loss"], functional.pointwise_loss(images, texts[0], scale, bias))


def test_text_features_as_tensor_or_list_agree(batch):
    images, texts, scale, bias = batch
    as_tensor = MGLLLoss()(images, texts, scale, bias, labels=level_labels(B))
    as_list = MGLLLoss()(images, list(texts.unbind(0)), scale, bias, labels=level_labels(B))
    torch.testing.assert_close(as_tensor, as_list)


def test_gradients_reach_features_scale_and_bias(batch):
    images, texts, _, _ = batch
    images.requires_grad_(True)
    texts.requires_grad_(True)
    log_scale = torch.tensor(2.5, requires_grad=True)
    bias = torch.tensor(-2.0, requires_grad=True)
    MGLLLoss()(images, texts, log_scale.exp(), bias, labels=level_labels(B)).backward()
    for tensor in (images, texts, log_scale, bias):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_repr_lists_options():
    text = repr(MGLLLoss(match="overlap"))
    assert "match='overlap'" in text and "soft_clip_weight=0.5" in text


def test_torch_compile_matches_eager(batch):
    images, texts, scale, bias = batch
    loss = MGLLLoss()
    labels = level_labels(B)
    eager_images = images.clone().requires_grad_(True)
    eager = loss(eager_images, texts, scale, bias, labels=labels)
    eager.backward()
    compiled_loss = torch.compile(loss, backend="aot_eager")
    compiled_images = images.clone().requires_grad_(True)
    compiled = compiled_loss(compiled_images, texts, scale, bias, labels=labels)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_images.grad, eager_images.grad)


def test_one_level_with_only_the_smooth_kl_weighted_gives_a_zero_in_the_graph():
    # the smooth KL is 0 for one level: the loss is identically 0, and a training step still runs
    images = unit_features(4, 6, requires_grad=True)
    loss = MGLLLoss(soft_clip_weight=0, pointwise_weight=0)(images, unit_features(1, 4, 6, seed=1), 10.0)
    assert loss.dtype == torch.float32 and loss.requires_grad and not torch.signbit(loss)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(images.grad, torch.zeros_like(images))
