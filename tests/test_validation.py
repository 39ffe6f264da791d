"""Input validation: every bad input raises a ``TypeError``/``ValueError`` that names the argument
(and, where the message has them, the expected and received shapes), before any heavy work.

One test per bad input, each run on the functional API and on the nn.Modules
(the error contract in CONTRIBUTING.md, "Errors").
"""

from __future__ import annotations

import math

import pytest
import torch

import mgll_loss.backends
from mgll_loss import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss
from mgll_loss import functional as MF
from mgll_loss.utils import clamp_logit_scale

from .helpers import literal_regex, skip_without_triton, unit_features

B, D, G = 4, 8, 3
SCALE = 10.0


def _images():
    return unit_features(B, D, seed=1)


def _texts(n=B):
    return unit_features(n, D, seed=2)


def _levels(g=G, n=B):
    return unit_features(g, n, D, seed=3)


# -------------------------------------------------------------------------------------------------
# the APIs under test: name -> callable(image_features, text_features, logit_scale, logit_bias, **kw)
# -------------------------------------------------------------------------------------------------
SINGLE = {
    "functional.soft_clip_loss": MF.soft_clip_loss,
    "functional.pointwise_loss": MF.pointwise_loss,
    "SoftCLIPLoss": lambda *a, **k: SoftCLIPLoss()(*a, **k),
    "PointwiseLoss": lambda *a, **k: PointwiseLoss()(*a, **k),
}
# multi-level APIs that take labels / targets (SmoothKLLoss validates them too)
MULTI_LABELLED = {
    "functional.mgll_loss": MF.mgll_loss,
    "MGLLLoss": lambda *a, **k: MGLLLoss()(*a, **k),
    "SmoothKLLoss": lambda *a, **k: SmoothKLLoss()(*a, **k),
}
MULTI = {**MULTI_LABELLED, "functional.smooth_kl_loss": MF.smooth_kl_loss}
ALL = {**SINGLE, **MULTI}
LABELLED = {**SINGLE, **MULTI_LABELLED}


def _call(api, image_features=None, text_features=None, logit_scale=SCALE, logit_bias=None, **kw):
    """Call ``api`` with valid defaults for whatever is not given."""
    if image_features is None:
        image_features = _images()
    if text_features is None:
        text_features = _texts() if api in SINGLE else _levels()
    return ALL[api](image_features, text_features, logit_scale, logit_bias, **kw)


def _call_level(api, n_texts=B, **level_kw):
    """Put ``level_kw`` (labels / targets / text_mask) on one level with ``n_texts`` texts.

    Single-level APIs get them as is. Multi-level APIs get two levels of ``n_texts`` texts each
    (equal N, so the smooth KL's own check never interferes), the keyword values on level 1
    (``[None, value]``) and, where the API takes them, valid explicit targets [B, n_texts] on
    level 0. Returns the call and the suffix the error must name (``""`` or ``"[1]"``).
    """
    if api in SINGLE:
        return lambda: _call(api, text_features=_texts(n_texts), **level_kw), ""
    kw = {key: [None, value] for key, value in level_kw.items()}
    if api in MULTI_LABELLED:
        kw["targets"] = [torch.eye(B, n_texts), kw.get("targets", [None, None])[1]]
    return lambda: _call(api, text_features=[_texts(n_texts), _texts(n_texts)], **kw), "[1]"


# =================================================================================================
# features
# =================================================================================================
@pytest.mark.parametrize("api", ALL)
def test_image_features_not_a_tensor(api):
    with pytest.raises(TypeError, match=literal_regex("image_features", "list")):
        _call(api, image_features=_images().tolist())


@pytest.mark.parametrize("api", ALL)
def test_text_features_not_a_tensor(api):
    with pytest.raises(TypeError, match=literal_regex("text_features", "ndarray")):
        _call(api, text_features=(_texts() if api in SINGLE else _levels()).numpy())


@pytest.mark.parametrize("api", MULTI)
def test_text_features_list_of_non_tensors(api):
    with pytest.raises(TypeError, match=literal_regex("text_features[1]", "list")):
        _call(api, text_features=[_texts(), _texts().tolist(), _texts()])


@pytest.mark.parametrize("api", ALL)
def test_integer_image_features(api):
    with pytest.raises(TypeError, match=literal_regex("image_features", "floating", "int64")):
        _call(api, image_features=torch.ones(B, D, dtype=torch.long))


@pytest.mark.parametrize("api", ALL)
def test_integer_text_features(api):
    texts = torch.ones(B, D, dtype=torch.int32) if api in SINGLE else torch.ones(G, B, D, dtype=torch.int32)
    with pytest.raises(TypeError, match=literal_regex("text_features", "floating", "int32")):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", ALL)
@pytest.mark.parametrize("shape", [(B * D,), (2, 2, D)], ids=["rank1", "rank3"])
def test_image_features_wrong_rank(api, shape):
    got = "[" + ", ".join(map(str, shape)) + "]"
    with pytest.raises(ValueError, match=literal_regex("image_features", "[B, D]", got)):
        _call(api, image_features=_images().reshape(shape))


@pytest.mark.parametrize("api", ALL)
def test_text_features_wrong_rank(api):
    # a single-level API given [G, N, D], a multi-level API given a bare [N, D] tensor
    texts = _levels() if api in SINGLE else _texts()
    expected = "[N, D]" if api in SINGLE else "[G, N, D]"
    got = f"[{G}, {B}, {D}]" if api in SINGLE else f"[{B}, {D}]"
    with pytest.raises(ValueError, match=literal_regex("text_features", expected, got)):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", ALL)
def test_mismatched_feature_dims(api):
    texts = unit_features(B, D - 2) if api in SINGLE else unit_features(G, B, D - 2)
    got = f"[{B}, {D - 2}]" if api in SINGLE else f"[{G}, {B}, {D - 2}]"
    # the message names both shapes: image_features [4, 8] and the text features received
    with pytest.raises(ValueError, match=literal_regex("text_features", f"D={D}", f"[{B}, {D}]", got)):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", MULTI)
def test_mismatched_feature_dims_in_one_level_of_a_list(api):
    texts = [_texts(), unit_features(B, D + 1), _texts()]
    with pytest.raises(ValueError, match=literal_regex("text_features[1]", f"[{B}, {D}]", f"[{B}, {D + 1}]")):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", ALL)
def test_empty_batch(api):
    with pytest.raises(ValueError, match=literal_regex("image_features", "B >= 1", f"[0, {D}]")):
        _call(api, image_features=torch.zeros(0, D))


@pytest.mark.parametrize("api", ALL)
def test_empty_texts(api):
    texts = torch.zeros(0, D) if api in SINGLE else torch.zeros(G, 0, D)
    got = f"[0, {D}]" if api in SINGLE else f"[{G}, 0, {D}]"
    with pytest.raises(ValueError, match=literal_regex("text_features", "N >= 1", got)):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", MULTI)
def test_empty_level_list(api):
    with pytest.raises(ValueError, match=literal_regex("text_features", "at least one level")):
        _call(api, text_features=[])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tensors on different devices need a GPU")
@pytest.mark.parametrize("api", ALL)
def test_features_on_different_devices(api):
    texts = (_texts() if api in SINGLE else _levels()).cuda()
    with pytest.raises(ValueError, match=literal_regex("text_features", "cpu", "cuda")):
        _call(api, text_features=texts)


# =================================================================================================
# labels and targets (one level; multi-level APIs: the bad entry is on level 1)
# =================================================================================================
@pytest.mark.parametrize("api", LABELLED)
def test_labels_not_a_tensor(api):
    call, level = _call_level(api, labels=[0, 1, 0, 1])
    with pytest.raises(TypeError, match=literal_regex(f"labels{level}", "list")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_class_ids_wrong_length(api):
    call, level = _call_level(api, labels=torch.arange(B + 1))
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", f"B={B}", f"[{B + 1}]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_multi_hot_wrong_number_of_rows(api):
    call, level = _call_level(api, labels=torch.ones(B - 1, 3))
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", f"B={B}", f"[{B - 1}, 3]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_labels_rank3(api):
    call, level = _call_level(api, labels=torch.zeros(B, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", f"[{B}, 2, 2]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_labels_rank0(api):
    call, level = _call_level(api, labels=torch.tensor(1))
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", "[]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_float_class_ids(api):
    call, level = _call_level(api, labels=torch.tensor([0.0, 1.0, 0.0, 2.0]))
    with pytest.raises(TypeError, match=literal_regex(f"labels{level}", "integer", "float32")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_bool_class_ids(api):
    call, level = _call_level(api, labels=torch.tensor([True, False, True, False]))
    with pytest.raises(TypeError, match=literal_regex(f"labels{level}", "integer", "bool")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_multi_hot_with_a_two(api):
    labels = torch.tensor([[1, 0], [0, 1], [2, 0], [0, 0]])
    call, level = _call_level(api, labels=labels)
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", "0 and 1")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_multi_hot_with_a_half(api):
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0], [0.0, 0.0]])
    call, level = _call_level(api, labels=labels)
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", "0 and 1")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_labels_when_texts_differ_from_images(api):
    call, level = _call_level(api, n_texts=B - 1, labels=torch.arange(B))
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", "N == B", f"N={B - 1}", f"B={B}", "targets")):
        call()


@pytest.mark.parametrize("api", [*SINGLE, "functional.mgll_loss", "MGLLLoss"])
def test_identity_targets_when_texts_differ_from_images(api):
    # no labels, no targets: text j is image j's positive, which needs N == B
    call, level = _call_level(api, n_texts=B + 2)
    expected = literal_regex(f"text_features{level}: without labels or targets", "N == B", f"N={B + 2}", f"B={B}")
    with pytest.raises(ValueError, match=expected):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_targets_not_a_tensor(api):
    call, level = _call_level(api, targets=torch.eye(B).tolist())
    with pytest.raises(TypeError, match=literal_regex(f"targets{level}", "list")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_targets_wrong_shape(api):
    call, level = _call_level(api, n_texts=B - 1, targets=torch.eye(B))
    with pytest.raises(ValueError, match=literal_regex(f"targets{level}", f"[{B}, {B - 1}]", f"[{B}, {B}]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_targets_negative(api):
    targets = torch.eye(B)
    targets[0, 1] = -0.1
    call, level = _call_level(api, targets=targets)
    with pytest.raises(ValueError, match=literal_regex(f"targets{level}", "[0, 1]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_targets_above_one(api):
    targets = torch.eye(B)
    targets[2, 2] = 1.5
    call, level = _call_level(api, targets=targets)
    with pytest.raises(ValueError, match=literal_regex(f"targets{level}", "[0, 1]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_targets_nan(api):
    targets = torch.eye(B)
    targets[1, 0] = float("nan")
    call, level = _call_level(api, targets=targets)
    with pytest.raises(ValueError, match=literal_regex(f"targets{level}", "[0, 1]")):
        call()


@pytest.mark.parametrize("api", LABELLED)
def test_labels_and_targets_for_one_level(api):
    call, level = _call_level(api, labels=torch.arange(B), targets=torch.eye(B))
    with pytest.raises(ValueError, match=literal_regex(f"labels{level}", "not both")):
        call()


def test_labels_and_targets_on_different_levels_are_fine():
    labels = [torch.tensor([0, 0, 1, 1]), None, None]
    targets = [None, torch.eye(B), None]
    for fn in (MF.mgll_loss, MGLLLoss(), SmoothKLLoss()):
        assert torch.isfinite(fn(_images(), _levels(), SCALE, labels=labels, targets=targets))


# =================================================================================================
# multi-level structure
# =================================================================================================
@pytest.mark.parametrize("api", ["functional.smooth_kl_loss", "SmoothKLLoss"])
@pytest.mark.parametrize("as_list", [False, True], ids=["tensor", "list"])
def test_smooth_kl_single_level(api, as_list):
    texts = [_texts()] if as_list else _levels(g=1)
    with pytest.raises(ValueError, match=literal_regex("text_features", "G >= 2", "G=1")):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_mgll_single_level_is_accepted(api):
    # docs/math.md, "The total": for G == 1 the smooth KL term is 0 (MGLLLoss works with one level)
    terms = _call(api, text_features=_levels(g=1), labels=[torch.tensor([0, 0, 1, 2])], output_dict=True)
    assert float(terms["smooth_kl_loss"]) == 0.0
    assert torch.isfinite(terms["soft_clip_loss"]) and torch.isfinite(terms["pointwise_loss"])


@pytest.mark.parametrize("api", ["functional.smooth_kl_loss", "SmoothKLLoss"])
def test_smooth_kl_levels_with_different_n(api):
    texts = [_texts(B), _texts(B - 1)]
    with pytest.raises(ValueError, match=literal_regex("text_features", "same number of texts", f"[{B}, {B - 1}]")):
        _call(api, text_features=texts)


@pytest.mark.parametrize("api", ["functional.smooth_kl_loss", "SmoothKLLoss", "SmoothKLLoss+targets"])
def test_smooth_kl_accepts_equal_n_different_from_b(api):
    # docs/math.md, "Smooth KL loss": it needs G >= 2 and the same N in every level, not N == B
    texts = _levels(g=2, n=B - 1)
    if api == "SmoothKLLoss+targets":
        out = SmoothKLLoss()(_images(), texts, SCALE, targets=[torch.full((B, B - 1), 0.5)] * 2)
    else:
        out = _call(api, text_features=texts)
    assert torch.isfinite(out)


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_mgll_smooth_kl_levels_with_different_n(api):
    texts = [_texts(B), _texts(B - 1)]
    targets = [None, torch.full((B, B - 1), 0.5)]
    with pytest.raises(
        ValueError, match=literal_regex("text_features", "same number", f"[{B}, {B - 1}]", "smooth_kl_weight=0")
    ):
        _call(api, text_features=texts, targets=targets)


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_mgll_without_smooth_kl_accepts_levels_with_different_n(api):
    texts = [_texts(B), _texts(B - 1), _texts(B + 2)]
    targets = [None, torch.full((B, B - 1), 0.5), torch.eye(B, B + 2)]
    if api == "MGLLLoss":
        terms = MGLLLoss(smooth_kl_weight=0)(_images(), texts, SCALE, targets=targets, output_dict=True)
    else:
        terms = MF.mgll_loss(_images(), texts, SCALE, targets=targets, smooth_kl_weight=0.0, output_dict=True)
    assert float(terms["smooth_kl_loss"]) == 0.0
    assert all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("api", MULTI_LABELLED)
@pytest.mark.parametrize("key, count", [("labels", G - 1), ("labels", G + 1), ("targets", G - 1), ("targets", G + 1)])
def test_per_level_sequence_wrong_length(api, key, count):
    with pytest.raises(ValueError, match=literal_regex(key, f"G={G}", f"got {count}")):
        _call(api, **{key: [None] * count})


@pytest.mark.parametrize("api", MULTI)
def test_text_mask_list_wrong_length(api):
    with pytest.raises(ValueError, match=literal_regex("text_mask", f"G={G}", f"got {G - 1}")):
        _call(api, text_mask=[None] * (G - 1))


@pytest.mark.parametrize("api", MULTI_LABELLED)
@pytest.mark.parametrize("key", ["labels", "targets"])
def test_tensor_instead_of_a_per_level_list(api, key):
    value = torch.zeros(G, B, dtype=torch.long) if key == "labels" else torch.eye(B).expand(G, B, B)
    with pytest.raises(TypeError, match=literal_regex(key, "list", "Tensor")):
        _call(api, **{key: value})


# =================================================================================================
# text masks
# =================================================================================================
@pytest.mark.parametrize("api", ALL)
def test_text_mask_wrong_shape(api):
    call, level = _call_level(api, text_mask=torch.ones(B + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=literal_regex(f"text_mask{level}", f"N={B}", f"[{B + 1}]")):
        call()


@pytest.mark.parametrize("api", ALL)
def test_text_mask_float(api):
    call, level = _call_level(api, text_mask=torch.ones(B))
    with pytest.raises(TypeError, match=literal_regex(f"text_mask{level}", "bool", "float32")):
        call()


@pytest.mark.parametrize("api", ALL)
def test_text_mask_not_a_tensor(api):
    call, level = _call_level(api, text_mask=[True] * B)
    with pytest.raises(TypeError, match=literal_regex(f"text_mask{level}", "list")):
        call()


@pytest.mark.parametrize("api", MULTI)
def test_multi_level_text_mask_tensor_wrong_shape(api):
    with pytest.raises(ValueError, match=literal_regex("text_mask", f"[{G}, {B}]", f"[{G}, {B + 1}]")):
        _call(api, text_mask=torch.ones(G, B + 1, dtype=torch.bool))


@pytest.mark.parametrize("api", MULTI)
def test_multi_level_text_mask_tensor_float(api):
    with pytest.raises(TypeError, match=literal_regex("text_mask", "bool", "float32")):
        _call(api, text_mask=torch.ones(G, B))


# =================================================================================================
# weights
# =================================================================================================
WEIGHT_NAMES = ["soft_clip_weight", "pointwise_weight", "smooth_kl_weight"]


def _mgll_with(api, **options):
    """Build (module) or call (functional) MGLL with ``options``."""
    if api == "MGLLLoss":
        return MGLLLoss(**options)
    return MF.mgll_loss(_images(), _levels(), SCALE, **options)


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
@pytest.mark.parametrize("name", WEIGHT_NAMES)
def test_negative_weight(api, name):
    with pytest.raises(ValueError, match=literal_regex(name, "non-negative", "-0.5")):
        _mgll_with(api, **{name: -0.5})


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
@pytest.mark.parametrize("name", WEIGHT_NAMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weight(api, name, value):
    with pytest.raises(ValueError, match=literal_regex(name, "finite", str(value))):
        _mgll_with(api, **{name: value})


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
@pytest.mark.parametrize("name", WEIGHT_NAMES)
@pytest.mark.parametrize("value", ["1.0", True, None], ids=["str", "bool", "None"])
def test_weight_not_a_number(api, name, value):
    with pytest.raises(TypeError, match=literal_regex(name, "number", type(value).__name__)):
        _mgll_with(api, **{name: value})


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_negative_level_weight(api):
    with pytest.raises(ValueError, match=literal_regex("level_weights[1]", "non-negative", "-1.0")):
        _mgll_with(api, level_weights=[1.0, -1.0, 1.0])


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_nan_level_weight(api):
    with pytest.raises(ValueError, match=literal_regex("level_weights[2]", "finite", "nan")):
        _mgll_with(api, level_weights=[1.0, 1.0, float("nan")])


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_level_weights_tensor_that_requires_grad_is_refused(api):
    # a learnable weight would silently get no gradient: the level weights are constants of the loss
    weights = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    with pytest.raises(TypeError, match=literal_regex("level_weights", "constant", "requires grad")):
        _mgll_with(api, level_weights=weights)
    _mgll_with(api, level_weights=weights.detach())  # a constant tensor is fine


def test_level_weights_wrong_length_functional():
    with pytest.raises(ValueError, match=literal_regex("level_weights", f"G={G}", "got 2")):
        MF.mgll_loss(_images(), _levels(), SCALE, level_weights=[1.0, 2.0])


def test_level_weights_wrong_length_module():
    # the module cannot know G before forward: the check happens there
    loss = MGLLLoss(level_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=literal_regex("level_weights", f"G={G}", "got 2")):
        loss(_images(), _levels(), SCALE)


def test_level_weights_not_a_sequence_functional():
    with pytest.raises(TypeError, match=literal_regex("level_weights", "sequence", "float")):
        MF.mgll_loss(_images(), _levels(), SCALE, level_weights=2.0)


def test_level_weights_not_a_sequence_module():
    with pytest.raises(TypeError, match=literal_regex("level_weights", "sequence", "float")):
        MGLLLoss(level_weights=2.0)


def test_level_weights_tensor_is_accepted():
    loss = MGLLLoss(level_weights=torch.tensor([1.0, 0.5, 0.0]))
    assert torch.isfinite(loss(_images(), _levels(), SCALE))


# =================================================================================================
# option strings
# =================================================================================================
OPTION_MODULES = {
    "match": (SoftCLIPLoss, PointwiseLoss, MGLLLoss),
    "normalization": (PointwiseLoss, MGLLLoss),
    "pointwise_target": (PointwiseLoss, MGLLLoss),
    "kl_direction": (SmoothKLLoss, MGLLLoss),
    "backend": (SoftCLIPLoss, PointwiseLoss, SmoothKLLoss, MGLLLoss),
}
OPTION_FUNCTIONALS = {
    "match": ("functional.soft_clip_loss", "functional.pointwise_loss", "functional.mgll_loss"),
    "normalization": ("functional.pointwise_loss", "functional.mgll_loss"),
    "pointwise_target": ("functional.pointwise_loss", "functional.mgll_loss"),
    "kl_direction": ("functional.smooth_kl_loss", "functional.mgll_loss"),
    "backend": (
        "functional.soft_clip_loss",
        "functional.pointwise_loss",
        "functional.smooth_kl_loss",
        "functional.mgll_loss",
    ),
}
OPTION_VALID = {
    "match": "'exact', 'overlap', 'jaccard'",
    "normalization": "'pairs', 'rows'",
    "pointwise_target": "'mask', 'row_normalized'",
    "kl_direction": "'to_mean', 'from_mean'",
    "backend": "'auto', 'dense', 'chunked', 'triton'",
}


@pytest.mark.parametrize(
    "option, cls",
    [(o, c) for o, classes in OPTION_MODULES.items() for c in classes],
    ids=lambda x: getattr(x, "__name__", x),
)
@pytest.mark.parametrize("value", ["bogus", "Exact", None], ids=["bogus", "wrong-case", "None"])
def test_unknown_option_module(option, cls, value):
    with pytest.raises(ValueError, match=literal_regex(option, OPTION_VALID[option], repr(value))):
        cls(**{option: value})


@pytest.mark.parametrize("option, api", [(o, a) for o, apis in OPTION_FUNCTIONALS.items() for a in apis])
def test_unknown_option_functional(option, api):
    with pytest.raises(ValueError, match=literal_regex(option, OPTION_VALID[option], "'bogus'")):
        _call(api, **{option: "bogus"})


@pytest.mark.parametrize("cls", [SoftCLIPLoss, PointwiseLoss, SmoothKLLoss, MGLLLoss])
@pytest.mark.parametrize("backend", ["auto", "dense", "chunked", "triton"])
def test_available_backends(cls, backend):
    if backend == "triton":
        skip_without_triton()
    assert cls(backend=backend).backend == backend


@pytest.mark.parametrize("cls", [SoftCLIPLoss, PointwiseLoss, SmoothKLLoss, MGLLLoss])
@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError), ("8", TypeError)]
)
def test_bad_chunk_size_at_construction(cls, value, error):
    with pytest.raises(
        error,
        match=literal_regex("chunk_size", "positive int", str(value) if error is ValueError else type(value).__name__),
    ):
        cls(backend="chunked", chunk_size=value)


@pytest.mark.parametrize("api", OPTION_FUNCTIONALS["backend"])
def test_bad_chunk_size_functional(api):
    with pytest.raises(ValueError, match=literal_regex("chunk_size", "positive int", "0")):
        _call(api, backend="chunked", chunk_size=0)


# =================================================================================================
# logit scale and bias
# =================================================================================================
@pytest.mark.parametrize("api", ALL)
def test_logit_scale_not_scalar(api):
    with pytest.raises(ValueError, match=literal_regex("logit_scale", "scalar", "[3]")):
        _call(api, logit_scale=torch.full((3,), SCALE))


@pytest.mark.parametrize("api", ALL)
@pytest.mark.parametrize("value", ["10.0", None, True], ids=["str", "None", "bool"])
def test_logit_scale_not_a_number(api, value):
    with pytest.raises(TypeError, match=literal_regex("logit_scale", type(value).__name__)):
        _call(api, logit_scale=value)


@pytest.mark.parametrize("api", ALL)
def test_logit_bias_not_scalar(api):
    with pytest.raises(ValueError, match=literal_regex("logit_bias", "scalar", "[2, 1]")):
        _call(api, logit_bias=torch.zeros(2, 1))


@pytest.mark.parametrize("api", ALL)
def test_logit_bias_string(api):
    with pytest.raises(TypeError, match=literal_regex("logit_bias", "str")):
        _call(api, logit_bias="-10")


@pytest.mark.parametrize("api", ALL)
def test_one_element_scale_and_bias_are_accepted(api):
    out = _call(api, logit_scale=torch.tensor([SCALE]), logit_bias=torch.tensor([[-1.0]]))
    assert out.dim() == 0 and torch.isfinite(out)


# =================================================================================================
# errors come before heavy work
# =================================================================================================
class _BackendCalled(Exception):
    pass


@pytest.fixture
def backend_must_not_run(monkeypatch):
    """Replace every registered backend, and the batched backend's weighted terms, by a function that fails."""

    def forbidden(*args):
        raise _BackendCalled("the backend ran although the input is invalid")

    for key in list(mgll_loss.backends._BACKENDS):
        monkeypatch.setitem(mgll_loss.backends._BACKENDS, key, forbidden)
    monkeypatch.setattr(mgll_loss.dispatch, "batched_weighted_terms", forbidden)


@pytest.mark.parametrize("api", ALL)
def test_patched_backend_is_the_one_called(api, backend_must_not_run):
    # sanity check of the fixture: valid input does reach the (patched) backend
    with pytest.raises(_BackendCalled):
        _call(api)


BAD_LEVEL_INPUTS = {
    "multi_hot_two": dict(labels=torch.tensor([[1, 0], [0, 1], [2, 0], [0, 0]])),
    "labels_wrong_length": dict(labels=torch.arange(B + 1)),
    "float_class_ids": dict(labels=torch.zeros(B)),
    "targets_above_one": dict(targets=torch.eye(B) * 2),
    "text_mask_wrong_shape": dict(text_mask=torch.ones(B - 1, dtype=torch.bool)),
}


@pytest.mark.parametrize("api", LABELLED)
@pytest.mark.parametrize("case", BAD_LEVEL_INPUTS)
def test_bad_level_input_raises_before_backend(api, case, backend_must_not_run):
    call, _ = _call_level(api, **BAD_LEVEL_INPUTS[case])
    with pytest.raises((ValueError, TypeError)):
        call()


@pytest.mark.parametrize("api", ALL)
def test_bad_label_raises_value_error_before_backend(api, backend_must_not_run):
    if api == "functional.smooth_kl_loss":
        kw = dict(text_mask=torch.ones(G, B + 1, dtype=torch.bool))  # takes no labels
    elif api in SINGLE:
        kw = dict(labels=torch.tensor([0, 1, 2, 5, 6]))
    else:
        kw = dict(labels=[None, torch.tensor([0, 1, 2, 5, 6]), None])
    with pytest.raises(ValueError):
        _call(api, **kw)


@pytest.mark.parametrize("api", ALL)
def test_bad_scale_raises_before_backend(api, backend_must_not_run):
    with pytest.raises(ValueError, match="logit_scale"):
        _call(api, logit_scale=torch.ones(2))


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss"])
def test_bad_level_weights_raise_before_backend(api, backend_must_not_run):
    with pytest.raises(ValueError, match="level_weights"):
        if api == "MGLLLoss":
            MGLLLoss(level_weights=[1.0])(_images(), _levels(), SCALE)
        else:
            MF.mgll_loss(_images(), _levels(), SCALE, level_weights=[1.0])


@pytest.mark.parametrize("api", ["functional.mgll_loss", "MGLLLoss", "SmoothKLLoss", "functional.smooth_kl_loss"])
def test_smooth_kl_level_check_raises_before_backend(api, backend_must_not_run):
    texts = _levels(g=1) if "mooth" in api else [_texts(B), _texts(B - 1)]
    kw = {} if "mooth" in api else dict(targets=[None, torch.full((B, B - 1), 0.5)])
    with pytest.raises(ValueError, match="text_features"):
        _call(api, text_features=texts, **kw)


# =================================================================================================
# utils.clamp_logit_scale
# =================================================================================================
@pytest.mark.parametrize("value", [4.6, [4.6], None], ids=["float", "list", "None"])
def test_clamp_logit_scale_not_a_tensor(value):
    with pytest.raises(TypeError, match=literal_regex("parameter", "tensor", type(value).__name__)):
        clamp_logit_scale(value)


@pytest.mark.parametrize("max_value", [1, 1.0, 0.5, 0, -3.0, float("nan")])
def test_clamp_logit_scale_max_value_not_above_one(max_value):
    with pytest.raises(ValueError, match=literal_regex("max_value", "> 1")):
        clamp_logit_scale(torch.nn.Parameter(torch.tensor(2.0)), max_value=max_value)


@pytest.mark.parametrize(
    "value, max_value, expected",
    [
        (7.0, 100.0, math.log(100.0)),
        (-1.0, 100.0, 0.0),
        (2.0, 100.0, 2.0),
        (0.0, 100.0, 0.0),
        (5.0, 50, math.log(50.0)),
        (math.log(1 / 0.07), 100.0, math.log(1 / 0.07)),
    ],
)
def test_clamp_logit_scale_clamps_in_place(value, max_value, expected):
    param = torch.nn.Parameter(torch.tensor(value))
    storage = param.data_ptr()
    out = clamp_logit_scale(param, max_value=max_value)
    assert out is param
    assert param.data_ptr() == storage
    assert param.requires_grad and param.is_leaf and param.grad_fn is None
    assert param.item() == pytest.approx(expected, abs=1e-6)
    assert 1.0 - 1e-6 <= param.detach().exp().item() <= max_value * (1 + 1e-6)


def test_clamp_logit_scale_keeps_training_working():
    param = torch.nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale(param)
    loss = MF.soft_clip_loss(_images(), _texts(), param.exp())
    loss.backward()
    assert param.grad is not None and torch.isfinite(param.grad)
    with torch.no_grad():  # a plain SGD step (torch.optim is slow to import)
        param -= 1e3 * param.grad
    clamp_logit_scale(param)
    assert 0.0 <= param.item() <= math.log(100.0) + 1e-6


def test_clamp_logit_scale_elementwise_and_default_max():
    param = torch.nn.Parameter(torch.tensor([-2.0, 1.0, 10.0]))
    clamp_logit_scale(param)
    torch.testing.assert_close(param.detach(), torch.tensor([0.0, 1.0, math.log(100.0)]))


# --- non-finite features: an error, never a NaN loss ------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "where, name",
    [("image", "image_features"), ("stacked", "text_features"), ("list", "text_features[1]")],
)
def test_non_finite_features(value, where, name):
    images, levels = _images(), _levels()
    if where == "image":
        images[2, 1] = value
    else:
        levels[1, 3, 0] = value
    text = list(levels) if where == "list" else levels
    with pytest.raises(ValueError, match=literal_regex(name, "expected finite values", "NaN and", "inf")):
        MGLLLoss()(images, text, 10.0)


def test_non_finite_single_level_text_features():
    texts = _texts()
    texts[0, 0] = float("nan")
    with pytest.raises(ValueError, match=literal_regex("text_features", "finite")):
        SoftCLIPLoss()(_images(), texts, 10.0)


def test_bias_error_does_not_mention_the_logit_scale():
    with pytest.raises(ValueError) as error:
        SoftCLIPLoss()(_images(), _texts(), 10.0, logit_bias=float("nan"))
    assert "logit_bias" in str(error.value) and "logit scale" not in str(error.value)


def test_every_term_weight_zero_is_refused():
    message = "soft_clip_weight, pointwise_weight, smooth_kl_weight: expected at least one positive weight"
    with pytest.raises(ValueError, match=message):
        MGLLLoss(soft_clip_weight=0, pointwise_weight=0, smooth_kl_weight=0)
    images, texts = unit_features(4, 6), unit_features(2, 4, 6)
    with pytest.raises(ValueError, match=message):
        MF.mgll_loss(images, texts, 10.0, soft_clip_weight=0.0, pointwise_weight=0, smooth_kl_weight=0)


def test_per_level_argument_given_as_one_tensor_gets_the_right_hint():
    images, texts = unit_features(4, 6), unit_features(3, 4, 6)
    ids = torch.tensor([0, 1, 0, 2])
    with pytest.raises(TypeError, match=literal_regex("labels: expected a list or tuple", "[labels] * 3")):
        MGLLLoss()(images, texts, 10.0, labels=ids)
    with pytest.raises(TypeError, match=literal_regex("labels: expected a list or tuple", "list(labels)")):
        MGLLLoss()(images, texts, 10.0, labels=torch.stack([ids] * 3))


@pytest.mark.parametrize("api", ["SoftCLIPLoss", "PointwiseLoss", "SmoothKLLoss", "MGLLLoss", "functional.mgll_loss"])
def test_output_dict_must_be_a_bool(api):
    images, texts = unit_features(4, 6), unit_features(2, 4, 6)
    single = api in ("SoftCLIPLoss", "PointwiseLoss")
    call = MF.mgll_loss if api == "functional.mgll_loss" else getattr(mgll_loss, api)()
    with pytest.raises(TypeError, match=literal_regex("output_dict: expected a bool, got str")):
        call(images, texts[0] if single else texts, 10.0, output_dict="no")
