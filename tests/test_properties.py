"""Hypothesis properties of the losses (the property list in CONTRIBUTING.md, "Tests")."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgll_loss import functional

from .helpers import unit_features

settings.register_profile("mgll", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("mgll")


@st.composite
def problems(draw, max_levels: int = 3):
    """Random multi-level inputs in float64 with labels that may repeat."""
    batch = draw(st.integers(1, 10))
    dim = draw(st.integers(2, 6))
    levels = draw(st.integers(1, max_levels))
    seed = draw(st.integers(0, 2**16))
    images = unit_features(batch, dim, dtype=torch.float64, seed=seed)
    texts = unit_features(levels, batch, dim, dtype=torch.float64, seed=seed + 1)
    kinds = draw(st.lists(st.sampled_from(["none", "ids", "multi_hot"]), min_size=levels, max_size=levels))
    generator = torch.Generator().manual_seed(seed + 2)
    labels = [
        None
        if kind == "none"
        else torch.randint(0, 3, (batch,), generator=generator)
        if kind == "ids"
        else torch.randint(0, 2, (batch, 3), generator=generator)
        for kind in kinds
    ]
    scale = draw(st.floats(0.5, 100.0))
    bias = draw(st.one_of(st.none(), st.floats(-10.0, 10.0)))
    match = draw(st.sampled_from(["exact", "overlap", "jaccard"]))
    return images, texts, labels, scale, bias, match


@given(problems(), st.randoms(use_true_random=False))
def test_batch_permutation_invariance(problem, rng):
    images, texts, labels, scale, bias, match = problem
    order = list(range(images.shape[0]))
    rng.shuffle(order)
    perm = torch.tensor(order)
    permuted_labels = [None if y is None else y[perm] for y in labels]
    before = functional.mgll_loss(images, texts, scale, bias, labels=labels, match=match, output_dict=True)
    after = functional.mgll_loss(
        images[perm], texts[:, perm], scale, bias, labels=permuted_labels, match=match, output_dict=True
    )
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-9, atol=1e-9)


@given(problems())
def test_unique_labels_equal_no_labels(problem):
    images, texts, _, scale, bias, match = problem
    unique = [torch.randperm(images.shape[0]) for _ in range(texts.shape[0])]
    with_ids = functional.mgll_loss(images, texts, scale, bias, labels=unique, output_dict=True)
    plain = functional.mgll_loss(images, texts, scale, bias, output_dict=True)
    one_hot = [torch.eye(images.shape[0], dtype=torch.long)[ids] for ids in unique]
    with_multi_hot = functional.mgll_loss(images, texts, scale, bias, labels=one_hot, match=match, output_dict=True)
    for name in plain:
        torch.testing.assert_close(with_ids[name], plain[name], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(with_multi_hot[name], plain[name], rtol=1e-9, atol=1e-9)


@given(problems(max_levels=1), st.integers(2, 4), st.sampled_from(["to_mean", "from_mean"]))
def test_identical_levels_have_zero_smooth_kl(problem, levels, direction):
    images, texts, _, scale, bias, _ = problem
    repeated = texts.expand(levels, -1, -1)
    kl = functional.smooth_kl_loss(images, repeated, scale, bias, kl_direction=direction)
    torch.testing.assert_close(kl, torch.zeros((), dtype=kl.dtype), rtol=0, atol=1e-10)


@given(
    problems(),
    st.sampled_from(["pairs", "rows"]),
    st.sampled_from(["mask", "row_normalized"]),
    st.sampled_from(["to_mean", "from_mean"]),
)
def test_terms_are_non_negative_and_sum_to_total(problem, normalization, pointwise_target, direction):
    images, texts, labels, scale, bias, match = problem
    options = dict(
        labels=labels,
        match=match,
        normalization=normalization,
        pointwise_target=pointwise_target,
        kl_direction=direction,
    )
    terms = functional.mgll_loss(images, texts, scale, bias, output_dict=True, **options)
    total = functional.mgll_loss(images, texts, scale, bias, **options)
    for name, value in terms.items():
        assert value >= -1e-12, (name, value)
        assert torch.isfinite(value), name
    torch.testing.assert_close(sum(terms.values()), total, rtol=1e-12, atol=1e-12)


@given(problems(max_levels=1))
def test_soft_clip_is_symmetric_under_swapping_images_and_texts(problem):
    images, texts, labels, scale, bias, match = problem
    forward = functional.soft_clip_loss(images, texts[0], scale, bias, labels=labels[0], match=match)
    swapped = functional.soft_clip_loss(texts[0], images, scale, bias, labels=labels[0], match=match)
    torch.testing.assert_close(forward, swapped, rtol=1e-9, atol=1e-9)
