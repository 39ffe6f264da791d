"""Parity of ``mgll_loss`` (functional and nn.Modules) with the plain reference in ``tests/reference.py``.

Values and gradients (features, logit_scale, logit_bias) are compared for every target mode,
option, text-mask pattern, level layout and a few odd shapes, per dtype (the tolerance table of
``tests/helpers.py``) and per device (the ``device`` fixture: the library runs there, the reference
on the CPU in float64). The cases live in ``tests/parity_cases.py``.
"""

from __future__ import annotations

import pytest
import torch

import mgll_loss
from mgll_loss import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss
from mgll_loss import functional as MF

from .helpers import (
    LOW_PRECISION,
    TOL,
    check_dtype,
    check_grads,
    check_value,
    multi_hot_from_rows,
    to_device,
    unit_features,
)
from .parity_cases import (
    BIAS_VALUE,
    MASK8,
    MGLL_OPTIONS,
    MH_ROWS,
    MULTI_CASES,
    SCALES,
    SINGLE_CASES,
    VOCAB_TARGETS,
    leaves,
    multi_level_case,
    run_mgll,
    single_inputs,
)
from .reference import ref_mgll, ref_pointwise, ref_positive_mask, ref_smooth_kl, ref_soft_clip


# ---------------------------------------------------------------------------------------------
# the reference itself: masks from the definition (independent of the library)
# ---------------------------------------------------------------------------------------------
def test_reference_masks_from_definition():
    mh = multi_hot_from_rows(MH_ROWS, 4)
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
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("case", SINGLE_CASES)
def test_soft_clip_parity(case, scale, dtype, device):
    # bias on/off alternates so that every case meets both (a bias cannot change a softmax, but it
    # must not break the value or the gradients either; its own gradient must be 0)
    bias = BIAS_VALUE if (SINGLE_CASES.index(case) + SCALES.index(scale)) % 2 else None
    image64, text64, labels, targets, mask, match = single_inputs(case)
    lib, ref = leaves(image64, text64, scale, bias, dtype, device)
    kw = dict(labels=labels, targets=targets, text_mask=mask)
    out = MF.soft_clip_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], **to_device(kw, device), match=match)
    want = ref_soft_clip(ref["image"], ref["text"], ref["scale"], ref["bias"], **kw, match=match)
    check_dtype(out, dtype)
    check_value(out, want, dtype)
    out.backward()
    want.backward()
    check_grads(lib, ref, dtype)


POINTWISE_VARIANTS = [("pairs", "mask"), ("rows", "mask"), ("pairs", "row_normalized"), ("rows", "row_normalized")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalization,pointwise_target", POINTWISE_VARIANTS)
@pytest.mark.parametrize("case", SINGLE_CASES)
def test_pointwise_parity(case, normalization, pointwise_target, dtype, device):
    # scale and bias cycle so that every case meets every scale and both bias settings
    k = SINGLE_CASES.index(case) + POINTWISE_VARIANTS.index((normalization, pointwise_target))
    scale = SCALES[k % 3]
    bias = BIAS_VALUE if k % 2 else None
    image64, text64, labels, targets, mask, match = single_inputs(case, seed=1)
    lib, ref = leaves(image64, text64, scale, bias, dtype, device)
    kw = dict(labels=labels, targets=targets, text_mask=mask)
    options = dict(match=match, normalization=normalization, pointwise_target=pointwise_target)
    out = MF.pointwise_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], **to_device(kw, device), **options)
    want = ref_pointwise(ref["image"], ref["text"], ref["scale"], ref["bias"], **kw, **options)
    check_dtype(out, dtype)
    check_value(out, want, dtype)
    out.backward()
    want.backward()
    check_grads(lib, ref, dtype)


# ---------------------------------------------------------------------------------------------
# single level: nn.Modules == reference (and == functional), output_dict
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["class_ids_masked", "multihot_jaccard", "targets_vocab_N5", "B1_identity"])
def test_soft_clip_module(case, device):
    image64, text64, labels, targets, mask, match = single_inputs(case, seed=2)
    lib, ref = leaves(image64, text64, 14.3, BIAS_VALUE, torch.float64, device)
    kw = dict(labels=labels, targets=targets, text_mask=mask)
    module = SoftCLIPLoss(match=match)
    out = module(lib["image"], lib["text"], lib["scale"], lib["bias"], **to_device(kw, device), output_dict=True)
    assert set(out) == {"soft_clip_loss"}
    want = ref_soft_clip(ref["image"], ref["text"], ref["scale"], ref["bias"], **kw, match=match)
    check_value(out["soft_clip_loss"], want, torch.float64)
    out["soft_clip_loss"].backward()
    want.backward()
    check_grads(lib, ref, torch.float64)
    plain = module(*to_device((image64, text64), device), 14.3, BIAS_VALUE, **to_device(kw, device))
    check_value(plain, want, torch.float64, "module with Python-number scale/bias")


@pytest.mark.parametrize("normalization", ["pairs", "rows"])
@pytest.mark.parametrize("pointwise_target", ["mask", "row_normalized"])
@pytest.mark.parametrize("case", ["class_ids_masked", "multihot_overlap", "targets_zero_rows"])
def test_pointwise_module(case, pointwise_target, normalization, device):
    image64, text64, labels, targets, mask, match = single_inputs(case, seed=3)
    lib, ref = leaves(image64, text64, 100.0, BIAS_VALUE, torch.float64, device)
    kw = dict(labels=labels, targets=targets, text_mask=mask)
    module = PointwiseLoss(match=match, normalization=normalization, pointwise_target=pointwise_target)
    out = module(lib["image"], lib["text"], lib["scale"], lib["bias"], **to_device(kw, device), output_dict=True)
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
    check_value(out["pointwise_loss"], want, torch.float64)
    out["pointwise_loss"].backward()
    want.backward()
    check_grads(lib, ref, torch.float64)


# ---------------------------------------------------------------------------------------------
# several levels: smooth KL and the MGLL total
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kl_direction", ["to_mean", "from_mean"])
@pytest.mark.parametrize("bias", [None, BIAS_VALUE], ids=["nobias", "bias"])
@pytest.mark.parametrize("case", MULTI_CASES)
def test_smooth_kl_parity(case, bias, kl_direction, dtype, device):
    image64, texts64, labels, targets, mask = multi_level_case(case)
    scale = SCALES[MULTI_CASES.index(case) % 3]
    lib, ref = leaves(image64, texts64, scale, bias, dtype, device)
    out = MF.smooth_kl_loss(
        lib["image"],
        lib["text"],
        lib["scale"],
        lib["bias"],
        text_mask=to_device(mask, device),
        kl_direction=kl_direction,
    )
    want = ref_smooth_kl(
        ref["image"], ref["text"], ref["scale"], ref["bias"], text_mask=mask, kl_direction=kl_direction
    )
    check_dtype(out, dtype)
    check_value(out, want, dtype)
    assert float(out.detach()) >= -TOL[dtype]["loss_atol"]  # KL is non-negative
    out.backward()
    want.backward()
    check_grads(lib, ref, dtype)
    # module, labels/targets accepted (validated, unused)
    module = SmoothKLLoss(kl_direction=kl_direction)
    call = to_device(dict(labels=labels, targets=targets, text_mask=mask), device)
    out_m = module(lib["image"], lib["text"], lib["scale"], lib["bias"], **call, output_dict=True)
    assert set(out_m) == {"smooth_kl_loss"}
    check_value(out_m["smooth_kl_loss"], want, dtype, "SmoothKLLoss")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("opt_index", range(len(MGLL_OPTIONS)))
@pytest.mark.parametrize("case", MULTI_CASES)
def test_mgll_parity(case, opt_index, dtype, device):
    k = MULTI_CASES.index(case) + opt_index
    scale = SCALES[k % 3]
    bias = BIAS_VALUE if (MULTI_CASES.index(case) // 2 + opt_index) % 2 else None
    use_module = opt_index % 2 == 1  # half through MGLLLoss, half through functional.mgll_loss
    lib, ref, out, want = run_mgll(case, MGLL_OPTIONS[opt_index], scale, bias, dtype, use_module, device=device)
    assert set(out) == {"soft_clip_loss", "pointwise_loss", "smooth_kl_loss"}
    for key in want:
        check_dtype(out[key], dtype)
        check_value(out[key], want[key], dtype, key)
    total = out["soft_clip_loss"] + out["pointwise_loss"] + out["smooth_kl_loss"]
    total_ref = want["soft_clip_loss"] + want["pointwise_loss"] + want["smooth_kl_loss"]
    total.backward()
    total_ref.backward()
    check_grads(lib, ref, dtype)


@pytest.mark.parametrize("case", ["G3_tensor_labels_mask", "G3_targets_vocab_N5"])
def test_mgll_plain_total_equals_dict_sum(case, device):
    image64, texts64, labels, targets, mask = multi_level_case(case)
    opts = dict(level_weights=[1.0, 0.5, 2.0], kl_direction="from_mean")
    call = dict(labels=labels, targets=targets, text_mask=mask)
    features = to_device((image64, texts64), device)
    total = MF.mgll_loss(*features, 14.3, BIAS_VALUE, **to_device(call, device), **opts)
    total_m = MGLLLoss(**opts)(*features, 14.3, BIAS_VALUE, **to_device(call, device))
    want = ref_mgll(image64, texts64, 14.3, BIAS_VALUE, **call, **opts)
    want_total = sum(want.values())
    check_value(total, want_total, torch.float64, "functional total")
    check_value(total_m, want_total, torch.float64, "module total")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [None, BIAS_VALUE], ids=["nobias", "bias"])
def test_mgll_single_level(bias, dtype, device):
    """G = 1 (a list of one level): smooth KL is 0, the rest is one level's soft CLIP + point-wise."""
    gen = torch.Generator().manual_seed(11)
    image64 = unit_features(8, 16, dtype=torch.float64, generator=gen)
    text64 = unit_features(8, 16, dtype=torch.float64, generator=gen)
    labels = [torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])]
    lib, ref = leaves(image64, [text64], 14.3, bias, dtype, device)
    call = to_device(dict(labels=labels, text_mask=[MASK8]), device)
    out = MGLLLoss(level_weights=[0.7])(lib["image"], lib["text"], lib["scale"], lib["bias"], **call, output_dict=True)
    want = ref_mgll(
        ref["image"], ref["text"], ref["scale"], ref["bias"], labels=labels, text_mask=[MASK8], level_weights=[0.7]
    )
    assert float(out["smooth_kl_loss"]) == 0.0
    for key in want:
        check_value(out[key], want[key], dtype, key)
    sum(out.values()).backward()
    sum(want.values()).backward()
    check_grads(lib, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [None, BIAS_VALUE], ids=["nobias", "bias"])
def test_mgll_unequal_levels_without_kl(bias, dtype, device):
    """G = 3 levels with N_g = (8, 5, 8) given as a list; smooth KL switched off (it needs equal N)."""
    gen = torch.Generator().manual_seed(12)
    image64 = unit_features(8, 16, dtype=torch.float64, generator=gen)
    texts64 = [
        unit_features(8, 16, dtype=torch.float64, generator=gen),
        unit_features(5, 16, dtype=torch.float64, generator=gen),
        unit_features(8, 16, dtype=torch.float64, generator=gen),
    ]
    labels = [None, None, torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])]
    targets = [None, VOCAB_TARGETS, None]
    mask = [MASK8, torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool), None]
    opts = dict(smooth_kl_weight=0.0, level_weights=[1.0, 2.0, 0.5], normalization="rows")
    lib, ref = leaves(image64, texts64, 100.0, bias, dtype, device)
    call = to_device(dict(labels=labels, targets=targets, text_mask=mask), device)
    out = MF.mgll_loss(lib["image"], lib["text"], lib["scale"], lib["bias"], **call, output_dict=True, **opts)
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
        check_value(out[key], want[key], dtype, key)
    assert float(out["smooth_kl_loss"]) == 0.0
    sum(out.values()).backward()
    sum(want.values()).backward()
    check_grads(lib, ref, dtype)


# ---------------------------------------------------------------------------------------------
# low precision inputs (fp16 / bf16): library on low-precision values vs reference on the same
# values upcast to float64 (tolerances in tests/helpers.py, TOL)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "f16"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("term", ["soft_clip", "pointwise", "mgll"])
def test_low_precision_parity(term, scale, dtype, device):
    if term == "soft_clip":
        image64, text64, labels, targets, mask, match = single_inputs("class_ids_masked", seed=5)
        call, options = dict(labels=labels, text_mask=mask), {}
        library, reference = MF.soft_clip_loss, ref_soft_clip
    elif term == "pointwise":
        image64, text64, labels, targets, mask, match = single_inputs("multihot_jaccard", seed=6)
        call, options = dict(labels=labels), dict(match="jaccard", normalization="rows")
        library, reference = MF.pointwise_loss, ref_pointwise
    else:
        image64, text64, labels, targets, mask = multi_level_case("G3_tensor_labels_mask")
        call, options = dict(labels=labels, text_mask=mask), dict(level_weights=[1.0, 0.5, 2.0])
        library = MF.mgll_loss

        def reference(*args, **kwargs):
            return sum(ref_mgll(*args, **kwargs).values())

    lib, ref = leaves(image64, text64, scale, BIAS_VALUE, dtype, device)
    out = library(lib["image"], lib["text"], lib["scale"], lib["bias"], **to_device(call, device), **options)
    want = reference(ref["image"], ref["text"], ref["scale"], ref["bias"], **call, **options)
    check_dtype(out, dtype)
    check_value(out, want, dtype)
    out.backward()
    want.backward()
    check_grads(lib, ref, dtype)


# ---------------------------------------------------------------------------------------------
# gradcheck in float64
# ---------------------------------------------------------------------------------------------
def test_gradcheck_mgll_loss():
    gen = torch.Generator().manual_seed(21)
    image = unit_features(5, 4, dtype=torch.float64, generator=gen).requires_grad_()
    texts = torch.stack([unit_features(5, 4, dtype=torch.float64, generator=gen) for _ in range(3)]).requires_grad_()
    scale = torch.tensor(3.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.2, dtype=torch.float64, requires_grad=True)
    labels = [torch.tensor([0, 1, 0, 2, 1]), None, multi_hot_from_rows([[0], [0, 1], [], [1], [0]], 2)]
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
    image = unit_features(5, 4, dtype=torch.float64, generator=gen).requires_grad_()
    text = unit_features(3, 4, dtype=torch.float64, generator=gen).requires_grad_()
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
