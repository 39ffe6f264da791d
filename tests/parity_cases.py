"""The parity matrix's inputs: cases, option sets, leaves, and one multi-level run against the reference.

Shared by tests/test_parity_reference.py (the library against tests/reference.py), tests/test_backends.py
(every backend against it) and ``benchmarks/gpu_check.py`` (the same on a CUDA device). Cases are
built on the CPU in float64 from fixed seeds; :func:`leaves` puts the library's copy on the device
under test and keeps the reference's copy on the CPU in float64 (the reference is CPU-only).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from mgll_loss import MGLLLoss
from mgll_loss import functional as MF

from .helpers import LOW_PRECISION, multi_hot_from_rows, to_device, unit_features
from .reference import ref_mgll

F64 = torch.float64
SCALES = (1.0, 14.3, 100.0)
BIAS_VALUE = -2.5

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


# -------------------------------------------------------------------------------------------------
# one level
# -------------------------------------------------------------------------------------------------
def single_level_case(name: str) -> tuple:
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
        return 8, 8, multi_hot_from_rows(MH_ROWS, 4), None, None, name.split("_")[1]
    if name == "multihot_bool_jaccard_masked":
        return 8, 8, multi_hot_from_rows(MH_ROWS, 4, torch.bool), None, MASK8, "jaccard"
    if name == "multihot_int_overlap":
        return 8, 8, multi_hot_from_rows(MH_ROWS, 4, torch.long), None, None, "overlap"
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


def single_inputs(case: str, seed: int = 0) -> tuple:
    """(image64 [B, 16], text64 [N, 16], labels, targets, text_mask, match) of a one-level case, on the CPU."""
    B, N, labels, targets, mask, match = single_level_case(case)
    gen = torch.Generator().manual_seed(seed)
    image64 = unit_features(B, 16, dtype=F64, generator=gen)
    return image64, unit_features(N, 16, dtype=F64, generator=gen), labels, targets, mask, match


# -------------------------------------------------------------------------------------------------
# several levels
# -------------------------------------------------------------------------------------------------
def multi_level_case(name: str) -> tuple:
    """(image64, texts64 [tensor or list], labels list|None, targets list|None, text_mask), on the CPU."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # deterministic across processes

    def unit(n: int) -> torch.Tensor:
        return unit_features(n, 16, dtype=F64, generator=gen)

    ids8 = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    if name == "G3_tensor_identity":
        return unit(8), torch.stack([unit(8) for _ in range(3)]), None, None, None
    if name == "G3_tensor_labels_mask":
        # level 0 identity, level 1 class ids, level 2 multi-hot; the mask of level 0 leaves images
        # 2 and 6 without a positive, the mask of level 1 leaves image 6 (singleton class) without one.
        mask = torch.stack([MASK8, MASK8, torch.tensor([1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)])
        texts = torch.stack([unit(8) for _ in range(3)])
        return unit(8), texts, [None, ids8, multi_hot_from_rows(MH_ROWS, 4)], None, mask
    if name == "G3_list_masks_with_none":
        mask = [None, MASK8, torch.tensor([0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)]
        texts = [unit(8) for _ in range(3)]
        return unit(8), texts, [ids8, None, ids8], None, mask
    if name == "G3_targets_vocab_N5":
        texts = [unit(5) for _ in range(3)]
        tg = [VOCAB_TARGETS, VOCAB_TARGETS.flip(1), VOCAB_TARGETS.roll(1, 0)]
        return unit(8), texts, None, tg, [None, torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool), None]
    if name == "G3_zero_row_targets":
        texts = torch.stack([unit(8) for _ in range(3)])
        return unit(8), texts, [None, None, ids8], [ZERO_ROW_TARGETS, ZERO_ROW_TARGETS.t(), None], None
    if name == "G2_B1":
        return unit(1), torch.stack([unit(1) for _ in range(2)]), None, None, None
    if name == "G3_B70":
        ids = torch.randint(0, 9, (70,), generator=gen)
        mh = (torch.rand(70, 5, generator=gen) < 0.3).float()
        texts = torch.stack([unit(70) for _ in range(3)])
        return unit(70), texts, [ids, mh, None], None, None
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


# -------------------------------------------------------------------------------------------------
# leaves and one run
# -------------------------------------------------------------------------------------------------
def leaves(
    image64: torch.Tensor,
    texts64: Any,
    scale: float,
    bias: float | None,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Library leaves in ``dtype`` on ``device``, and reference leaves holding the same values in float64 on the CPU.

    ``texts64`` is a tensor or a list of per-level tensors. The logit scale and bias are float32 leaves
    for low-precision features (as a model keeps them), ``dtype`` otherwise.
    """
    scale_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
    img = image64.to(device=device, dtype=dtype).requires_grad_()
    if isinstance(texts64, (list, tuple)):
        txt = [t.to(device=device, dtype=dtype).requires_grad_() for t in texts64]
        txt_ref = [t.detach().cpu().double().requires_grad_() for t in txt]
    else:
        txt = texts64.to(device=device, dtype=dtype).requires_grad_()
        txt_ref = txt.detach().cpu().double().requires_grad_()
    s = torch.tensor(scale, dtype=scale_dtype, device=device, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=scale_dtype, device=device, requires_grad=True)
    lib = dict(image=img, text=txt, scale=s, bias=b)
    ref = dict(
        image=img.detach().cpu().double().requires_grad_(),
        text=txt_ref,
        scale=s.detach().cpu().double().requires_grad_(),
        bias=None if b is None else b.detach().cpu().double().requires_grad_(),
    )
    return lib, ref


def run_mgll(
    case: str,
    opts: dict[str, Any],
    scale: float,
    bias: float | None,
    dtype: torch.dtype,
    use_module: bool,
    backend_options: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> tuple:
    """(lib, ref, out, want) of a multi-level case: the library (module or functional, with ``backend_options``)
    on ``device`` and the reference on the CPU, both as output dicts."""
    image64, texts64, labels, targets, mask = multi_level_case(case)
    G = len(texts64)
    opts = dict(opts)
    if "level_weights" in opts:
        opts["level_weights"] = opts["level_weights"][:G]
    lib, ref = leaves(image64, texts64, scale, bias, dtype, device)
    call = dict(labels=labels, targets=targets, text_mask=mask)
    on_device = to_device(call, device)
    library = dict(opts, **(backend_options or {}))
    if use_module:
        out = MGLLLoss(**library)(lib["image"], lib["text"], lib["scale"], lib["bias"], output_dict=True, **on_device)
    else:
        out = MF.mgll_loss(
            lib["image"], lib["text"], lib["scale"], lib["bias"], output_dict=True, **on_device, **library
        )
    want = ref_mgll(ref["image"], ref["text"], ref["scale"], ref["bias"], **call, **opts)
    return lib, ref, out, want
