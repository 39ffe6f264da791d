"""Parity of ``mgll_loss`` (functional and nn.Modules) with the plain reference in ``tests/reference.py``.

Values and gradients (features, logit_scale, logit_bias) are compared for every target mode,
option, text-mask pattern, level layout and a few odd shapes, per dtype (tolerance table below).
"""

from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import (  # noqa: E402
    ref_mgll,
    ref_pointwise,
    ref_positive_mask,
    ref_smooth_kl,
    ref_soft_clip,
)

import mgll_loss  # noqa: E402
from mgll_loss import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss  # noqa: E402
from mgll_loss import functional as MF  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Tolerance table.  For float16/bfloat16 the library runs on the low-precision inputs and the
# reference runs on *the same values* upcast to float64, so input rounding is not an error source.
# ---------------------------------------------------------------------------------------------
TOL = {
    # float64 in, float64 compute: only summation order differs.
    torch.float64: dict(loss_rtol=1e-10, loss_atol=1e-10, grad_rtol=1e-10, grad_atol=1e-10),
    # float32 compute: loss rtol 1e-5, grads atol 1e-5 (docs/backends.md, "Correctness").  Grads also get rtol 1e-5,
    # and the atol is scaled by max(1, max|g_ref|) (see _check_grads): at logit scale 100 gradient
    # entries are O(10), and even open_clip's ClipLoss in fp32 is off by 1.3e-5 on such a gradient.
    torch.float32: dict(loss_rtol=1e-5, loss_atol=1e-6, grad_rtol=1e-5, grad_atol=1e-5),
    # bfloat16 in: the reference sees the same (exactly upcast) values and docs/math.md requires fp32 compute
    # with an fp32 loss (checked by _check_dtype), so the loss is as accurate as in fp32 -> rtol 1e-5
    # (measured ~2e-8).  Gradients w.r.t. bf16 leaves are rounded once to bf16 (<= 2^-9 = 2e-3
    # relative per entry; measured max |err| / max |g| ~2e-3) -> rtol 1e-2, atol 1e-3 (scaled by the
    # gradient's size, see _check_grads) for entries near zero.  The fp32 scale/bias grads are
    # accurate to ~1e-7 and easily meet these.
    torch.bfloat16: dict(loss_rtol=1e-5, loss_atol=1e-6, grad_rtol=1e-2, grad_atol=1e-3),
    # float16 in: same reasoning; one rounding to fp16 is <= 2^-12 = 2.4e-4 relative (measured
    # max |err| / max |g| ~4e-4 incl. fp16 subnormals below 6.1e-5) -> rtol 2e-3, atol 1e-4 scaled.
    torch.float16: dict(loss_rtol=1e-5, loss_atol=1e-6, grad_rtol=2e-3, grad_atol=1e-4),
}
LOW_PRECISION = (torch.bfloat16, torch.float16)

SCALES = (1.0, 14.3, 100.0)
BIAS_VALUE = -2.5


# ---------------------------------------------------------------------------------------------
# input builders
# ---------------------------------------------------------------------------------------------
def _unit(n, d, gen):
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)


def _multi_hot(rows, num_classes, dtype=torch.float32):
    mh = torch.zeros(len(rows), num_classes, dtype=dtype)
    for i, labels in enumerate(rows):
        for c in labels:
            mh[i, c] = 1
    return mh


# Multi-hot rows with duplicates, overlaps, two empty label sets and a singleton.
MH_ROWS = [[0, 1], [0], [0, 1], [], [2], [1, 3], [], [2, 3]]
VOCAB_TARGETS = torch.tensor(  # B=8 images against a label-text vocabulary of N=5
    [
        [1, 0, 0, 0, 0],
        [0, 1, 0, 1, 0],
        [0, 0, 0, 0, 0],  # image without a positive text
        [0.5, 0.5, 0, 0, 0],  # soft weights
        [0, 0, 1, 0, 0],
        [1, 0, 0, 0, 1],
        [0, 0, 0, 1, 0],
        [0, 0, 1, 0, 0],
    ],
    dtype=torch.float32,
)
ZERO_ROW_TARGETS = torch.tensor(  # B=N=8, rows 1 and 5 and column 7 without a positive
    [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
        [0, 1, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [0.25, 0, 0, 0, 0, 0, 0.75, 0],
    ],
    dtype=torch.float32,
)
MASK8 = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)  # drops texts 2 and 6


def single_level_case(name):
    """(B, N, labels, targets, text_mask, match) for one level."""
    ids8 = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])  # duplicates; class 3 is a singleton (index 6)
    if name == "identity":
        return 8, 8, None, None, None, "exact"
    if name == "identity_masked":  # images 2 and 6 lose their only positive
        return 8, 8, None, None, MASK8, "exact"
    if name == "class_ids_dup":
        return 8, 8, ids8, None, None, "exact"
    if name == "class_ids_masked":  # image 6 (singleton class 3) loses its only positive
        return 8, 8, ids8, None, MASK8, "exact"
    if name in ("multihot_exact", "multihot_overlap", "multihot_jaccard"):
        return 8, 8, _multi_hot(MH_ROWS, 4), None, None, name.split("_")[1]
    if name == "multihot_bool_jaccard_masked":
        return 8, 8, _multi_hot(MH_ROWS, 4, torch.bool), None, MASK8, "jaccard"
    if name == "multihot_int_overlap":
        return 8, 8, _multi_hot(MH_ROWS, 4, torch.long), None, None, "overlap"
    if name == "targets_vocab_N5":
        return 8, 5, None, VOCAB_TARGETS, None, "exact"
    if name == "targets_vocab_N5_masked":
        return 8, 5, None, VOCAB_TARGETS, torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool), "exact"
    if name == "targets_zero_rows":
        return 8, 8, None, ZERO_ROW_TARGETS, None, "exact"
    if name == "B1_identity":
        return 1, 1, None, None, None, "exact"
    if name == "B1_targets_N5":
        return 1, 5, None, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]]), None, "exact"
    if name == "B7_targets_N3":
        t = torch.zeros(7, 3)
        for i in range(7):
            t[i, i % 3] = 1.0
        return 7, 3, None, t, None, "exact"
    if name == "B70_class_ids":
        g = torch.Generator().manual_seed(70)
        return 70, 70, torch.randint(0, 9, (70,), generator=g), None, None, "exact"
    if name == "B70_multihot_overlap":
        g = torch.Generator().manual_seed(71)
        return 70, 70, (torch.rand(70, 6, generator=g) < 0.25).float(), None, None, "overlap"
    raise KeyError(name)


SINGLE_CASES = [
    "identity",
    "identity_masked",
    "class_ids_dup",
    "class_ids_masked",
    "multihot_exact",
    "multihot_overlap",
    "multihot_jaccard",
    "multihot_bool_jaccard_masked",
    "multihot_int_overlap",
    "targets_vocab_N5",
    "targets_vocab_N5_masked",
    "targets_zero_rows",
    "B1_identity",
    "B1_targets_N5",
    "B7_targets_N3",
    "B70_class_ids",
    "B70_multihot_overlap",
]


def _leaves(image64, texts64, scale, bias, dtype, scale_dtype=None):
    """Library leaves in ``dtype`` and reference leaves holding the same values in float64."""
    scale_dtype = scale_dtype or (torch.float32 if dtype in LOW_PRECISION else dtype)
    img = image64.to(dtype).requires_grad_()
    if isinstance(texts64, (list, tuple)):
        txt = [t.to(dtype).requires_grad_() for t in texts64]
        txt_ref = [t.detach().double().requires_grad_() for t in txt]
    else:
        txt = texts64.to(dtype).requires_grad_()
        txt_ref = txt.detach().double().requires_grad_()
    s = torch.tensor(scale, dtype=scale_dtype, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=scale_dtype, requires_grad=True)
    lib = dict(image=img, text=txt, scale=s, bias=b)
    ref = dict(
        image=img.detach().double().requires_grad_(),
        text=txt_ref,
        scale=s.detach().double().requires_grad_(),
        bias=None if b is None else b.detach().double().requires_grad_(),
    )
    return lib, ref


def _grads(leaves):
    out = {"image": leaves["image"].grad, "scale": leaves["scale"].grad}
    if isinstance(leaves["text"], (list, tuple)):
        for g, t in enumerate(leaves["text"]):
            out[f"text{g}"] = t.grad
    else:
        out["text"] = leaves["text"].grad
    if leaves["bias"] is not None:
        out["bias"] = leaves["bias"].grad
    return out


def _check_value(got, want, dtype, what="loss"):
    tol = TOL[dtype]
    assert torch.isfinite(got).all(), f"{what}: not finite: {got}"
    torch.testing.assert_close(
        got.detach().double(),
        want.detach().double(),
        rtol=tol["loss_rtol"],
        atol=tol["loss_atol"],
        msg=lambda m: f"{what}: {m}",
    )


def _check_grads(lib, ref, dtype):
    """Gradients agree entry-wise within rtol, and within ``grad_atol * max(1, max|g_ref|)``.

    The absolute part is scaled by the size of the gradient tensor: gradients w.r.t. the features
    are proportional to the logit scale (up to O(10) at s=100), and an entry that is a cancellation
    of such O(10) terms carries an absolute rounding error proportional to them, in any
    implementation.  (Measured: open_clip's own ClipLoss in fp32 vs float64 at s=100, B=8 is off by
    1.3e-5 on single near-zero entries of a gradient whose largest entry is 10.8.)
    """
    tol = TOL[dtype]
    g_lib, g_ref = _grads(lib), _grads(ref)
    for key, want in g_ref.items():
        got = g_lib[key]
        if got is None and want is None:
            continue
        assert got is not None, f"no gradient reached {key} (reference gradient: {want})"
        if want is None:  # the reference does not depend on this leaf
            want = torch.zeros_like(got)
        size = max(1.0, float(want.detach().abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(
            got.double(),
            want.double(),
            rtol=tol["grad_rtol"],
            atol=tol["grad_atol"] * size,
            msg=lambda m, k=key: f"grad {k}: {m}",
        )


def _check_dtype(out, dtype):
    """docs/math.md, "Numerics": float64 in -> float64; fp32/fp16/bf16 in -> computed in fp32, fp32 out."""
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == expected, f"loss dtype {out.dtype}, expected {expected} for {dtype} inputs"


# ---------------------------------------------------------------------------------------------
# the reference itself: masks from the definition (independent of the library)
# ---------------------------------------------------------------------------------------------
def test_reference_masks_from_definition():
    mh = _multi_hot(MH_ROWS, 4)
    exact = ref_positive_mask(8, 8, labels=mh, match="exact")
    overlap = ref_positive_mask(8, 8, labels=mh, match="overlap")
    jac = ref_positive_mask(8, 8, labels=mh, match="jaccard")
    assert torch.equal(torch.diag(exact), torch.ones(8, dtype=torch.float64))
    assert torch.equal(torch.diag(overlap), torch.ones(8, dtype=torch.float64))
    assert torch.equal(torch.diag(jac), torch.ones(8, dtype=torch.float64))
    assert exact[0, 2] == 1 and exact[0, 1] == 0 and exact[3, 6] == 1  # {0,1}={0,1}; {}={}
    assert overlap[0, 1] == 1 and overlap[3, 0] == 0 and overlap[5, 7] == 1
    assert jac[0, 1] == 0.5 and jac[5, 7] == pytest.approx(1 / 3) and jac[3, 6] == 1 and jac[3, 0] == 0
    ids = ref_positive_mask(4, 4, labels=torch.tensor([3, 1, 3, 2]))
    assert ids.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]


# ---------------------------------------------------------------------------------------------
# single level: soft CLIP and point-wise, functional
# ---------------------------------------------------------------------------------------------
def _single_inputs(case, seed=0):
    B, N, labels, targets, mask, match = single_level_case(case)
    gen = torch.Generator().manual_seed(seed)
    return _unit(B, 16, gen), _unit(N, 16, gen), labels, targets, mask, match


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("case", SINGLE_CASES)
def test_soft_clip_parity(case, scale, dtype):
    # bias on/off alternates so that every case meets both (a bias cannot change a softmax, but it
    # must not break the value or the gradients either; its own gradient must be 0)
    bias = BIAS_VALUE if (SINGLE_CASES.index(case) + SCALES.index(scale)) % 2 else None
    image64, text64, labels, targets, mask, match = _single_inputs(case)
    lib, ref = _leaves(image64, text64, scale, bias, dtype)
    out = MF.soft_clip_loss(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        match=match,
    )
    want = ref_soft_clip(
        ref["image"],
        ref["text"],
        ref["scale"],
        ref["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        match=match,
    )
    _check_dtype(out, dtype)
    _check_value(out, want, dtype)
    out.backward()
    want.backward()
    _check_grads(lib, ref, dtype)


POINTWISE_VARIANTS = [("pairs", "mask"), ("rows", "mask"), ("pairs", "row_normalized"), ("rows", "row_normalized")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalization,pointwise_target", POINTWISE_VARIANTS)
@pytest.mark.parametrize("case", SINGLE_CASES)
def test_pointwise_parity(case, normalization, pointwise_target, dtype):
    # scale and bias cycle so that every case meets every scale and both bias settings
    k = SINGLE_CASES.index(case) + POINTWISE_VARIANTS.index((normalization, pointwise_target))
    scale = SCALES[k % 3]
    bias = BIAS_VALUE if k % 2 else None
    image64, text64, labels, targets, mask, match = _single_inputs(case, seed=1)
    lib, ref = _leaves(image64, text64, scale, bias, dtype)
    out = MF.pointwise_loss(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        match=match,
        normalization=normalization,
        pointwise_target=pointwise_target,
    )
    want = ref_pointwise(
        ref["image"],
        ref["text"],
        ref["scale"],
        ref["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        match=match,
        normalization=normalization,
        pointwise_target=pointwise_target,
    )
    _check_dtype(out, dtype)
    _check_value(out, want, dtype)
    out.backward()
    want.backward()
    _check_grads(lib, ref, dtype)


# ---------------------------------------------------------------------------------------------
# single level: nn.Modules == reference (and == functional), output_dict
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["class_ids_masked", "multihot_jaccard", "targets_vocab_N5", "B1_identity"])
def test_soft_clip_module(case):
    image64, text64, labels, targets, mask, match = _single_inputs(case, seed=2)
    lib, ref = _leaves(image64, text64, 14.3, BIAS_VALUE, torch.float64)
    module = SoftCLIPLoss(match=match)
    out = module(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        output_dict=True,
    )
    assert set(out) == {"soft_clip_loss"}
    want = ref_soft_clip(
        ref["image"],
        ref["text"],
        ref["scale"],
        ref["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        match=match,
    )
    _check_value(out["soft_clip_loss"], want, torch.float64)
    out["soft_clip_loss"].backward()
    want.backward()
    _check_grads(lib, ref, torch.float64)
    plain = module(image64, text64, 14.3, BIAS_VALUE, labels=labels, targets=targets, text_mask=mask)
    _check_value(plain, want, torch.float64, "module with Python-number scale/bias")


@pytest.mark.parametrize("normalization", ["pairs", "rows"])
@pytest.mark.parametrize("pointwise_target", ["mask", "row_normalized"])
@pytest.mark.parametrize("case", ["class_ids_masked", "multihot_overlap", "targets_zero_rows"])
def test_pointwise_module(case, pointwise_target, normalization):
    image64, text64, labels, targets, mask, match = _single_inputs(case, seed=3)
    lib, ref = _leaves(image64, text64, 100.0, BIAS_VALUE, torch.float64)
    module = PointwiseLoss(match=match, normalization=normalization, pointwise_target=pointwise_target)
    out = module(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        output_dict=True,
    )
    assert set(out) == {"pointwise_loss"}
    want = ref_pointwise(
        ref["image"],
        ref["text"],
        ref["scale"],
        ref["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        match=match,
        normalization=normalization,
        pointwise_target=pointwise_target,
    )
    _check_value(out["pointwise_loss"], want, torch.float64)
    out["pointwise_loss"].backward()
    want.backward()
    _check_grads(lib, ref, torch.float64)


# ---------------------------------------------------------------------------------------------
# several levels: smooth KL and the MGLL total
# ---------------------------------------------------------------------------------------------
def multi_level_case(name):
    """(image64, texts64 [tensor or list], labels list|None, targets list|None, text_mask, equal_N)."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # deterministic across processes
    ids8 = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    if name == "G3_tensor_identity":
        return _unit(8, 16, gen), torch.stack([_unit(8, 16, gen) for _ in range(3)]), None, None, None
    if name == "G3_tensor_labels_mask":
        # level 0 identity, level 1 class ids, level 2 multi-hot; the mask of level 0 leaves images
        # 2 and 6 without a positive, the mask of level 1 leaves image 6 (singleton class) without one.
        mask = torch.stack([MASK8, MASK8, torch.tensor([1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)])
        texts = torch.stack([_unit(8, 16, gen) for _ in range(3)])
        return _unit(8, 16, gen), texts, [None, ids8, _multi_hot(MH_ROWS, 4)], None, mask
    if name == "G3_list_masks_with_none":
        mask = [None, MASK8, torch.tensor([0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)]
        texts = [_unit(8, 16, gen) for _ in range(3)]
        return _unit(8, 16, gen), texts, [ids8, None, ids8], None, mask
    if name == "G3_targets_vocab_N5":
        texts = [_unit(5, 16, gen) for _ in range(3)]
        tg = [VOCAB_TARGETS, VOCAB_TARGETS.flip(1), VOCAB_TARGETS.roll(1, 0)]
        return _unit(8, 16, gen), texts, None, tg, [None, torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool), None]
    if name == "G3_zero_row_targets":
        texts = torch.stack([_unit(8, 16, gen) for _ in range(3)])
        return _unit(8, 16, gen), texts, [None, None, ids8], [ZERO_ROW_TARGETS, ZERO_ROW_TARGETS.t(), None], None
    if name == "G2_B1":
        return _unit(1, 16, gen), torch.stack([_unit(1, 16, gen) for _ in range(2)]), None, None, None
    if name == "G3_B70":
        ids = torch.randint(0, 9, (70,), generator=gen)
        mh = (torch.rand(70, 5, generator=gen) < 0.3).float()
        texts = torch.stack([_unit(70, 16, gen) for _ in range(3)])
        return _unit(70, 16, gen), texts, [ids, mh, None], None, None
    raise KeyError(name)


MULTI_CASES = [
    "G3_tensor_identity",
    "G3_tensor_labels_mask",
    "G3_list_masks_with_none",
    "G3_targets_vocab_N5",
    "G3_zero_row_targets",
    "G2_B1",
    "G3_B70",
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kl_direction", ["to_mean", "from_mean"])
@pytest.mark.parametrize("bias", [None, BIAS_VALUE], ids=["nobias", "bias"])
@pytest.mark.parametrize("case", MULTI_CASES)
def test_smooth_kl_parity(case, bias, kl_direction, dtype):
    image64, texts64, labels, targets, mask = multi_level_case(case)
    scale = SCALES[MULTI_CASES.index(case) % 3]
    lib, ref = _leaves(image64, texts64, scale, bias, dtype)
    out = MF.smooth_kl_loss(
        lib["image"], lib["text"], lib["scale"], lib["bias"], text_mask=mask, kl_direction=kl_direction
    )
    want = ref_smooth_kl(
        ref["image"], ref["text"], ref["scale"], ref["bias"], text_mask=mask, kl_direction=kl_direction
    )
    _check_dtype(out, dtype)
    _check_value(out, want, dtype)
    assert float(out.detach()) >= -TOL[dtype]["loss_atol"]  # KL is non-negative
    out.backward()
    want.backward()
    _check_grads(lib, ref, dtype)
    # module, labels/targets accepted (validated, unused)
    module = SmoothKLLoss(kl_direction=kl_direction)
    out_m = module(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        output_dict=True,
    )
    assert set(out_m) == {"smooth_kl_loss"}
    _check_value(out_m["smooth_kl_loss"], want, dtype, "SmoothKLLoss")


MGLL_OPTIONS = [
    dict(),  # defaults: weights (0.5, 1, 1), pairs, mask, to_mean
    dict(normalization="rows", pointwise_target="row_normalized", kl_direction="from_mean"),
    dict(
        soft_clip_weight=0.3,
        pointwise_weight=0.7,
        smooth_kl_weight=2.0,
        level_weights=[1.0, 0.5, 2.0],
        normalization="rows",
    ),
    dict(level_weights=[0.0, 1.5, 1.0], pointwise_target="row_normalized", kl_direction="from_mean"),
    dict(match="overlap", level_weights=[2.0, 1.0, 0.25]),
    dict(match="jaccard", normalization="rows"),
]


def _run_mgll(case, opts, scale, bias, dtype, use_module, backend_options=None):
    """Library (module or functional, with ``backend_options``) and reference outputs of a multi-level case."""
    image64, texts64, labels, targets, mask = multi_level_case(case)
    G = len(texts64)
    opts = dict(opts)
    if "level_weights" in opts:
        opts["level_weights"] = opts["level_weights"][:G]
    lib, ref = _leaves(image64, texts64, scale, bias, dtype)
    call = dict(labels=labels, targets=targets, text_mask=mask)
    library = dict(opts, **(backend_options or {}))
    if use_module:
        out = MGLLLoss(**library)(lib["image"], lib["text"], lib["scale"], lib["bias"], output_dict=True, **call)
    else:
        out = MF.mgll_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], output_dict=True, **call, **library)
    want = ref_mgll(ref["image"], ref["text"], ref["scale"], ref["bias"], **call, **opts)
    return lib, ref, out, want


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("opt_index", range(len(MGLL_OPTIONS)))
@pytest.mark.parametrize("case", MULTI_CASES)
def test_mgll_parity(case, opt_index, dtype):
    k = MULTI_CASES.index(case) + opt_index
    scale = SCALES[k % 3]
    bias = BIAS_VALUE if (MULTI_CASES.index(case) // 2 + opt_index) % 2 else None
    use_module = opt_index % 2 == 1  # half through MGLLLoss, half through functional.mgll_loss
    lib, ref, out, want = _run_mgll(case, MGLL_OPTIONS[opt_index], scale, bias, dtype, use_module)
    assert set(out) == {"soft_clip_loss", "pointwise_loss", "smooth_kl_loss"}
    for key in want:
        _check_dtype(out[key], dtype)
        _check_value(out[key], want[key], dtype, key)
    total = out["soft_clip_loss"] + out["pointwise_loss"] + out["smooth_kl_loss"]
    total_ref = want["soft_clip_loss"] + want["pointwise_loss"] + want["smooth_kl_loss"]
    total.backward()
    total_ref.backward()
    _check_grads(lib, ref, dtype)


@pytest.mark.parametrize("case", ["G3_tensor_labels_mask", "G3_targets_vocab_N5"])
def test_mgll_plain_total_equals_dict_sum(case):
    image64, texts64, labels, targets, mask = multi_level_case(case)
    opts = dict(level_weights=[1.0, 0.5, 2.0], kl_direction="from_mean")
    total = MF.mgll_loss(image64, texts64, 14.3, BIAS_VALUE, labels=labels, targets=targets, text_mask=mask, **opts)
    total_m = MGLLLoss(**opts)(image64, texts64, 14.3, BIAS_VALUE, labels=labels, targets=targets, text_mask=mask)
    want = ref_mgll(image64, texts64, 14.3, BIAS_VALUE, labels=labels, targets=targets, text_mask=mask, **opts)
    want_total = sum(want.values())
    _check_value(total, want_total, torch.float64, "functional total")
    _check_value(total_m, want_total, torch.float64, "module total")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [None, BIAS_VALUE], ids=["nobias", "bias"])
def test_mgll_single_level(bias, dtype):
    """G = 1 (a list of one level): smooth KL is 0, the rest is one level's soft CLIP + point-wise."""
    gen = torch.Generator().manual_seed(11)
    image64, text64 = _unit(8, 16, gen), _unit(8, 16, gen)
    labels = [torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])]
    lib, ref = _leaves(image64, [text64], 14.3, bias, dtype)
    out = MGLLLoss(level_weights=[0.7])(
        lib["image"], lib["text"], lib["scale"], lib["bias"], labels=labels, text_mask=[MASK8], output_dict=True
    )
    want = ref_mgll(
        ref["image"], ref["text"], ref["scale"], ref["bias"], labels=labels, text_mask=[MASK8], level_weights=[0.7]
    )
    assert float(out["smooth_kl_loss"]) == 0.0
    for key in want:
        _check_value(out[key], want[key], dtype, key)
    sum(out.values()).backward()
    sum(want.values()).backward()
    _check_grads(lib, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [None, BIAS_VALUE], ids=["nobias", "bias"])
def test_mgll_unequal_levels_without_kl(bias, dtype):
    """G = 3 levels with N_g = (8, 5, 8) given as a list; smooth KL switched off (it needs equal N)."""
    gen = torch.Generator().manual_seed(12)
    image64 = _unit(8, 16, gen)
    texts64 = [_unit(8, 16, gen), _unit(5, 16, gen), _unit(8, 16, gen)]
    labels = [None, None, torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])]
    targets = [None, VOCAB_TARGETS, None]
    mask = [MASK8, torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool), None]
    opts = dict(smooth_kl_weight=0.0, level_weights=[1.0, 2.0, 0.5], normalization="rows")
    lib, ref = _leaves(image64, texts64, 100.0, bias, dtype)
    out = MF.mgll_loss(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        labels=labels,
        targets=targets,
        text_mask=mask,
        output_dict=True,
        **opts,
    )
    # the reference's smooth KL refuses unequal N, so build the expected dict from its parts
    w = opts["level_weights"]
    clip = sum(
        w[g]
        * ref_soft_clip(
            ref["image"],
            ref["text"][g],
            ref["scale"],
            ref["bias"],
            labels=labels[g],
            targets=targets[g],
            text_mask=mask[g],
        )
        for g in range(3)
    )
    point = sum(
        w[g]
        * ref_pointwise(
            ref["image"],
            ref["text"][g],
            ref["scale"],
            ref["bias"],
            labels=labels[g],
            targets=targets[g],
            text_mask=mask[g],
            normalization="rows",
        )
        for g in range(3)
    )
    want = {"soft_clip_loss": 0.5 * clip, "pointwise_loss": 1.0 * point}
    for key in want:
        _check_value(out[key], want[key], dtype, key)
    assert float(out["smooth_kl_loss"]) == 0.0
    sum(out.values()).backward()
    sum(want.values()).backward()
    _check_grads(lib, ref, dtype)


# ---------------------------------------------------------------------------------------------
# low precision inputs (fp16 / bf16): library on low-precision values vs reference on the same
# values upcast to float64 (tolerances in TOL above)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "f16"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("term", ["soft_clip", "pointwise", "mgll"])
def test_low_precision_parity(term, scale, dtype):
    if term == "soft_clip":
        image64, text64, labels, targets, mask, match = _single_inputs("class_ids_masked", seed=5)
        lib, ref = _leaves(image64, text64, scale, BIAS_VALUE, dtype)
        out = MF.soft_clip_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], labels=labels, text_mask=mask)
        want = ref_soft_clip(ref["image"], ref["text"], ref["scale"], ref["bias"], labels=labels, text_mask=mask)
    elif term == "pointwise":
        image64, text64, labels, targets, mask, match = _single_inputs("multihot_jaccard", seed=6)
        lib, ref = _leaves(image64, text64, scale, BIAS_VALUE, dtype)
        out = MF.pointwise_loss(
            lib["image"], lib["text"], lib["scale"], lib["bias"], labels=labels, match="jaccard", normalization="rows"
        )
        want = ref_pointwise(
            ref["image"], ref["text"], ref["scale"], ref["bias"], labels=labels, match="jaccard", normalization="rows"
        )
    else:
        image64, texts64, labels, targets, mask = multi_level_case("G3_tensor_labels_mask")
        lib, ref = _leaves(image64, texts64, scale, BIAS_VALUE, dtype)
        out = MF.mgll_loss(
            lib["image"],
            lib["text"],
            lib["scale"],
            lib["bias"],
            labels=labels,
            text_mask=mask,
            level_weights=[1.0, 0.5, 2.0],
        )
        want = sum(
            ref_mgll(
                ref["image"],
                ref["text"],
                ref["scale"],
                ref["bias"],
                labels=labels,
                text_mask=mask,
                level_weights=[1.0, 0.5, 2.0],
            ).values()
        )
    _check_dtype(out, dtype)
    _check_value(out, want, dtype)
    out.backward()
    want.backward()
    _check_grads(lib, ref, dtype)


# ---------------------------------------------------------------------------------------------
# gradcheck in float64
# ---------------------------------------------------------------------------------------------
def test_gradcheck_mgll_loss():
    gen = torch.Generator().manual_seed(21)
    image = _unit(5, 4, gen).requires_grad_()
    texts = torch.stack([_unit(5, 4, gen) for _ in range(3)]).requires_grad_()
    scale = torch.tensor(3.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.2, dtype=torch.float64, requires_grad=True)
    labels = [torch.tensor([0, 1, 0, 2, 1]), None, _multi_hot([[0], [0, 1], [], [1], [0]], 2)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 1, 0, 1]], dtype=torch.bool)

    def fn(v, t, s, b):
        return MF.mgll_loss(v, t, s, b, labels=labels, text_mask=mask, match="overlap", level_weights=[1.0, 0.5, 2.0])

    assert torch.autograd.gradcheck(fn, (image, texts, scale, bias), eps=1e-6, atol=1e-6, rtol=1e-5)

    # and the reference agrees with itself under gradcheck (sanity of the reference)
    def fn_ref(v, t, s, b):
        return sum(
            ref_mgll(v, t, s, b, labels=labels, text_mask=mask, match="overlap", level_weights=[1.0, 0.5, 2.0]).values()
        )

    assert torch.autograd.gradcheck(fn_ref, (image, texts, scale, bias), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradcheck_soft_clip_and_pointwise_targets():
    gen = torch.Generator().manual_seed(22)
    image = _unit(5, 4, gen).requires_grad_()
    text = _unit(3, 4, gen).requires_grad_()
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [0.5, 0.5, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.float64)

    def fn(v, t, s, b):
        return MF.soft_clip_loss(v, t, s, b, targets=targets) + MF.pointwise_loss(
            v, t, s, b, targets=targets, pointwise_target="row_normalized"
        )

    assert torch.autograd.gradcheck(fn, (image, text, scale, bias), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_package_exports():
    assert mgll_loss.__version__ == "0.1.0"
    for name in ("soft_clip_loss", "pointwise_loss", "smooth_kl_loss", "mgll_loss"):
        assert callable(getattr(MF, name))
