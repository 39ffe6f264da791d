"""Parity of ``mgll_loss`` with external CLIP/SigLIP losses (open_clip, Hugging Face transformers).

With identity positives (no labels) the soft CLIP loss is plain CLIP (open_clip ``ClipLoss``,
HF ``image_text_contrastive_loss`` / ``clip_loss``) and the point-wise loss with
``normalization="rows"`` and a bias is SigLIP (open_clip ``SigLipLoss``), as docs/math.md states.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from mgll_loss import MGLLLoss, PointwiseLoss, SoftCLIPLoss
from mgll_loss import functional as MF

from .helpers import same_dtype_tol, unit_features
from .parity_cases import SCALES
from .reference import ref_pointwise, ref_soft_clip

DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["f64", "f32"]


def _inputs(B, D, seed, dtype, scale, bias=None):
    gen = torch.Generator().manual_seed(seed)
    v = unit_features(B, D, dtype=dtype, generator=gen)
    t = unit_features(B, D, dtype=dtype, generator=gen)
    s = torch.tensor(scale, dtype=dtype)
    b = None if bias is None else torch.tensor(bias, dtype=dtype)
    return v, t, s, b


def _value_and_grads(fn, *leaves):
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in leaves]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [None if x is None else x.grad for x in leaves]


def _assert_same(a, b, dtype, names):
    (va, ga), (vb, gb) = a, b
    # both sides compute in the same dtype; only reduction order differs
    tol = same_dtype_tol(dtype)
    torch.testing.assert_close(va.double(), vb.double(), **tol, msg=lambda m: f"loss: {m}")
    for name, x, y in zip(names, ga, gb, strict=True):
        if x is None and y is None:
            continue
        assert x is not None and y is not None, f"grad {name}: one side has no gradient"
        torch.testing.assert_close(x.double(), y.double(), **tol, msg=lambda m, n=name: f"grad {n}: {m}")


# ---------------------------------------------------------------------------------------------
# open_clip ClipLoss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("B", [1, 8, 70])
def test_soft_clip_equals_open_clip_cliploss(B, scale, dtype):
    loss_mod = pytest.importorskip("open_clip.loss")
    clip = loss_mod.ClipLoss()  # rank 0, world size 1
    v, t, s, _ = _inputs(B, 32, seed=B, dtype=dtype, scale=scale)
    names = ("image", "text", "scale")
    theirs = _value_and_grads(lambda a, b, c: clip(a, b, c), v, t, s)
    ours = _value_and_grads(lambda a, b, c: MF.soft_clip_loss(a, b, c), v, t, s)
    _assert_same(ours, theirs, dtype, names)
    ours_mod = _value_and_grads(lambda a, b, c: SoftCLIPLoss()(a, b, c), v, t, s)
    _assert_same(ours_mod, theirs, dtype, names)
    if dtype == torch.float64:  # the plain reference agrees with open_clip too
        ref = _value_and_grads(lambda a, b, c: ref_soft_clip(a, b, c), v, t, s)
        _assert_same(ref, theirs, dtype, names)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_clip_with_bias_equals_open_clip_cliploss(dtype):
    """A constant bias does not change a softmax: value equal, bias gradient 0 (as in ClipLoss)."""
    loss_mod = pytest.importorskip("open_clip.loss")
    if "logit_bias" not in inspect.signature(loss_mod.ClipLoss.forward).parameters:
        pytest.skip("this open_clip's ClipLoss takes no logit_bias (open_clip_torch 2.24 does not)")
    clip = loss_mod.ClipLoss()
    v, t, s, b = _inputs(8, 32, seed=3, dtype=dtype, scale=14.3, bias=-4.0)
    names = ("image", "text", "scale", "bias")
    theirs = _value_and_grads(lambda a, c, d, e: clip(a, c, d, e), v, t, s, b)
    ours = _value_and_grads(lambda a, c, d, e: MF.soft_clip_loss(a, c, d, e), v, t, s, b)
    _assert_same(ours, theirs, dtype, names)


# ---------------------------------------------------------------------------------------------
# open_clip SigLipLoss:  loss = -sum_ij logsigmoid(y_ij * z_ij) / B,  y = 2 I - 1
#   == sum_ij BCE(z_ij, I_ij) / B  ==  pointwise_loss(normalization="rows")
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("B", [1, 8, 70])
def test_pointwise_rows_equals_open_clip_siglip(B, scale, dtype):
    loss_mod = pytest.importorskip("open_clip.loss")
    siglip = loss_mod.SigLipLoss(rank=0, world_size=1)
    v, t, s, b = _inputs(B, 32, seed=100 + B, dtype=dtype, scale=scale, bias=-10.0)
    names = ("image", "text", "scale", "bias")
    theirs = _value_and_grads(lambda a, c, d, e: siglip(a, c, d, e), v, t, s, b)
    ours = _value_and_grads(lambda a, c, d, e: MF.pointwise_loss(a, c, d, e, normalization="rows"), v, t, s, b)
    _assert_same(ours, theirs, dtype, names)
    ours_mod = _value_and_grads(lambda a, c, d, e: PointwiseLoss(normalization="rows")(a, c, d, e), v, t, s, b)
    _assert_same(ours_mod, theirs, dtype, names)
    if dtype == torch.float64:
        ref = _value_and_grads(lambda a, c, d, e: ref_pointwise(a, c, d, e, normalization="rows"), v, t, s, b)
        _assert_same(ref, theirs, dtype, names)


def test_pointwise_pairs_is_siglip_over_B():
    """Default normalisation 'pairs' = SigLipLoss / N (mean over B*N pairs instead of sum / B)."""
    loss_mod = pytest.importorskip("open_clip.loss")
    siglip = loss_mod.SigLipLoss(rank=0, world_size=1)
    v, t, s, b = _inputs(8, 32, seed=7, dtype=torch.float64, scale=14.3, bias=-3.0)
    torch.testing.assert_close(MF.pointwise_loss(v, t, s, b), siglip(v, t, s, b) / 8, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Hugging Face CLIP loss (takes logits_per_text = s * T V^T)
# ---------------------------------------------------------------------------------------------
def _hf_clip_loss():
    mod = pytest.importorskip("transformers.models.clip.modeling_clip")
    fn = getattr(mod, "image_text_contrastive_loss", None) or getattr(mod, "clip_loss", None)
    if fn is None:
        pytest.skip("no CLIP loss function found in transformers.models.clip.modeling_clip")
    return fn


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("B", [1, 8, 70])
def test_soft_clip_equals_hf_clip_loss(B, scale, dtype):
    hf = _hf_clip_loss()
    v, t, s, _ = _inputs(B, 32, seed=200 + B, dtype=dtype, scale=scale)
    names = ("image", "text", "scale")
    theirs = _value_and_grads(lambda a, c, d: hf(d * c @ a.t()), v, t, s)  # logits_per_text [N, B]
    ours = _value_and_grads(lambda a, c, d: MF.soft_clip_loss(a, c, d), v, t, s)
    _assert_same(ours, theirs, dtype, names)


# ---------------------------------------------------------------------------------------------
# MGLL with identity targets: levels are plain CLIP; identical levels have zero smooth KL
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("G", [2, 3])
@pytest.mark.parametrize("kl_direction", ["to_mean", "from_mean"])
def test_identical_levels_give_zero_smooth_kl(kl_direction, G, dtype):
    v, t, s, b = _inputs(8, 32, seed=300 + G, dtype=dtype, scale=100.0, bias=-2.0)
    texts = torch.stack([t] * G)
    labels = [torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])] * G
    out = MGLLLoss(kl_direction=kl_direction)(v, texts, s, b, labels=labels, output_dict=True)
    assert abs(float(out["smooth_kl_loss"])) <= same_dtype_tol(dtype)["atol"], out["smooth_kl_loss"]
    out_list = MF.smooth_kl_loss(v, [t.clone() for _ in range(G)], s, b, kl_direction=kl_direction)
    assert abs(float(out_list)) <= same_dtype_tol(dtype)["atol"], out_list


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("G", [1, 3])
def test_mgll_soft_clip_term_is_weighted_sum_of_cliploss(G, dtype):
    loss_mod = pytest.importorskip("open_clip.loss")
    clip = loss_mod.ClipLoss()
    gen = torch.Generator().manual_seed(400 + G)
    v = unit_features(8, 32, dtype=dtype, generator=gen)
    texts = torch.stack([unit_features(8, 32, dtype=dtype, generator=gen) for _ in range(G)])
    s = torch.tensor(14.3, dtype=dtype)
    weight = 0.37

    def ours(a, c, d):
        return MGLLLoss(soft_clip_weight=weight)(a, c, d, output_dict=True)["soft_clip_loss"]

    def theirs(a, c, d):
        return weight * sum(clip(a, c[g], d) for g in range(G))

    _assert_same(
        _value_and_grads(ours, v, texts, s), _value_and_grads(theirs, v, texts, s), dtype, ("image", "texts", "scale")
    )
    # default soft_clip_weight is 0.5
    out = MGLLLoss()(v, texts, s, output_dict=True)["soft_clip_loss"]
    torch.testing.assert_close(
        out.double(), (0.5 * sum(clip(v, texts[g], s) for g in range(G))).double(), **same_dtype_tol(dtype)
    )
