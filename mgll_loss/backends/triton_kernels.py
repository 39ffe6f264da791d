"""Triton kernels of the triton backend: each program computes one tile of logits from ``tl.dot``.

Every kernel runs on a 2-D grid of (row block, column block) tiles of one level of a direction and never
writes logits to memory: statistics leave a tile through atomic max / add into per-row and
per-column vectors, gradients through atomic adds into dL/dV and dL/dT. The smooth KL kernels
walk all G levels of the same tile (twice: log m first, then the terms). Accumulation is in
``ACC`` (float32, or float64 for float64 inputs); fp32 products use IEEE precision, never TF32.

Positives (``MODE``): 0 keys (``P = [row_key == col_key]``), 1 multi-hot label sets compared by
``MATCH`` (1 overlap, 2 jaccard), 2 a dense [R, n] matrix.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logits(
    V,
    T,
    scale,
    bias,
    rows,
    text_rows,
    row_ok,
    col_ok,
    D,
    HAS_BIAS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC: tl.constexpr,
):
    """z = s * V[rows] @ T[text_rows]^T (+ b), [BM, BN]."""
    acc = tl.zeros((BM, BN), dtype=ACC)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < D
        a = tl.load(V + rows[:, None] * D + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(T + text_rows[:, None] * D + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=ACC)
    z = acc * tl.load(scale)
    if HAS_BIAS:
        z += tl.load(bias)
    return z


@triton.jit
def _positives(
    KEYS_R,
    KEYS_C,
    LABELS_R,
    LABELS_C,
    COUNT_R,
    COUNT_C,
    DENSE,
    rows,
    cols,
    row_ok,
    col_ok,
    n,
    C,
    MODE: tl.constexpr,
    MATCH: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    ACC: tl.constexpr,
):
    """The tile P[rows, cols] (zero outside the direction)."""
    valid = row_ok[:, None] & col_ok[None, :]
    if MODE == 0:
        row_keys = tl.load(KEYS_R + rows, mask=row_ok, other=-1)
        col_keys = tl.load(KEYS_C + cols, mask=col_ok, other=-2)
        positives = (row_keys[:, None] == col_keys[None, :]).to(ACC)
    elif MODE == 1:
        shared = tl.zeros((BM, BN), dtype=ACC)
        for c0 in range(0, C, BC):
            cs = c0 + tl.arange(0, BC)
            c_ok = cs < C
            a = tl.load(LABELS_R + rows[:, None] * C + cs[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(LABELS_C + cols[:, None] * C + cs[None, :], mask=col_ok[:, None] & c_ok[None, :], other=0.0)
            shared += tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=ACC)
        union = (
            tl.load(COUNT_R + rows, mask=row_ok, other=0.0)[:, None]
            + tl.load(COUNT_C + cols, mask=col_ok, other=0.0)[None, :]
            - shared
        )
        if MATCH == 1:
            positives = tl.where((shared > 0) | (union == 0), 1.0, 0.0).to(ACC)
        else:
            positives = tl.where(union > 0, shared / tl.where(union > 0, union, 1.0), 1.0).to(ACC)
    else:
        positives = tl.load(DENSE + rows[:, None] * n + cols[None, :], mask=valid, other=0.0).to(ACC)
    return tl.where(valid, positives, 0.0)


@triton.jit
def _softplus(z):
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|), log1p(t) as t * log(u) / (u - 1) with u = 1 + t.

    The quotient cancels the rounding of u (Goldberg's log1p), so a small softplus keeps its relative
    accuracy: ``log(1 + t)`` alone loses up to 6e-4 of it near t = 1e-4, which a point-wise sum made
    mostly of negatives (a logit bias of -9) shows. u = 1 exactly only for t below float32's epsilon.
    """
    tail = tl.exp(-tl.abs(z))
    u = 1.0 + tail
    rounded = u == 1.0
    return tl.maximum(z, 0.0) + tl.where(rounded, tail, tl.log(u) * (tail / tl.where(rounded, 1.0, u - 1.0)))


@triton.jit
def _tile(R, n, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows and columns, and which of them lie inside the [R, n] direction."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    return rows, cols, rows < R, cols < n


@triton.jit
def _text_rows(COL_INDEX, cols, col_ok, col_offset, HAS_INDEX: tl.constexpr):
    """The texts of the tile's columns: ``COL_INDEX[cols]``, or ``col_offset + cols``."""
    if HAS_INDEX:
        return tl.load(COL_INDEX + cols, mask=col_ok, other=0)
    return col_offset + cols


@triton.jit
def _exp(x, valid):
    """exp(x) inside the direction, 0 on the padding of a partial tile (where x is meaningless and may overflow)."""
    return tl.exp(tl.where(valid, x, -float("inf")))


@triton.jit
def _sigmoid(z):
    """1 / (1 + e^-z) without overflowing exp for very negative z."""
    tail = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + tail), tail / (1.0 + tail))


@triton.jit
def logit_max_kernel(
    V,
    T,
    scale,
    bias,
    COL_INDEX,
    ROW_MAX,
    COL_MAX,
    R,
    n,
    D,
    col_offset,
    HAS_BIAS: tl.constexpr,
    HAS_INDEX: tl.constexpr,
    WITH_COLS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC: tl.constexpr,
):
    """Row (and column) maxima of one level's logits."""
    rows, cols, row_ok, col_ok = _tile(R, n, BM, BN)
    text_rows = _text_rows(COL_INDEX, cols, col_ok, col_offset, HAS_INDEX)
    z = _logits(V, T, scale, bias, rows, text_rows, row_ok, col_ok, D, HAS_BIAS, BM, BN, BK, ACC)
    tl.atomic_max(ROW_MAX + rows, tl.max(tl.where(col_ok[None, :], z, -float("inf")), 1), mask=row_ok)
    if WITH_COLS:
        tl.atomic_max(COL_MAX + cols, tl.max(tl.where(row_ok[:, None], z, -float("inf")), 0), mask=col_ok)


@triton.jit
def loss_sums_kernel(
    V,
    T,
    scale,
    bias,
    COL_INDEX,
    ROW_MAX,
    COL_MAX,
    ROW_SUMEXP,
    COL_SUMEXP,
    ROW_MASS,
    ROW_PZ,
    COL_MASS,
    COL_PZ,
    ROW_SOFTPLUS,
    KEYS_R,
    KEYS_C,
    LABELS_R,
    LABELS_C,
    COUNT_R,
    COUNT_C,
    DENSE,
    R,
    n,
    D,
    C,
    col_offset,
    HAS_BIAS: tl.constexpr,
    HAS_INDEX: tl.constexpr,
    WITH_COLS: tl.constexpr,
    WITH_POSITIVES: tl.constexpr,
    WITH_SOFTPLUS: tl.constexpr,
    MODE: tl.constexpr,
    MATCH: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
    ACC: tl.constexpr,
):
    """Sums of exp(z - max) per row (and column), positive mass and logits, and softplus per row."""
    rows, cols, row_ok, col_ok = _tile(R, n, BM, BN)
    valid = row_ok[:, None] & col_ok[None, :]
    text_rows = _text_rows(COL_INDEX, cols, col_ok, col_offset, HAS_INDEX)
    z = _logits(V, T, scale, bias, rows, text_rows, row_ok, col_ok, D, HAS_BIAS, BM, BN, BK, ACC)
    row_max = tl.load(ROW_MAX + rows, mask=row_ok, other=0.0)
    tl.atomic_add(ROW_SUMEXP + rows, tl.sum(_exp(z - row_max[:, None], valid), 1), mask=row_ok)
    if WITH_COLS:
        col_max = tl.load(COL_MAX + cols, mask=col_ok, other=0.0)
        tl.atomic_add(COL_SUMEXP + cols, tl.sum(_exp(z - col_max[None, :], valid), 0), mask=col_ok)
    if WITH_POSITIVES:
        positives = _positives(
            KEYS_R,
            KEYS_C,
            LABELS_R,
            LABELS_C,
            COUNT_R,
            COUNT_C,
            DENSE,
            rows,
            cols,
            row_ok,
            col_ok,
            n,
            C,
            MODE,
            MATCH,
            BM,
            BN,
            BC,
            ACC,
        )
        pz = tl.where(valid, positives * z, 0.0)
        tl.atomic_add(ROW_MASS + rows, tl.sum(positives, 1), mask=row_ok)
        tl.atomic_add(ROW_PZ + rows, tl.sum(pz, 1), mask=row_ok)
        if WITH_COLS:
            tl.atomic_add(COL_MASS + cols, tl.sum(positives, 0), mask=col_ok)
            tl.atomic_add(COL_PZ + cols, tl.sum(pz, 0), mask=col_ok)
    if WITH_SOFTPLUS:
        tl.atomic_add(ROW_SOFTPLUS + rows, tl.sum(tl.where(valid, _softplus(z), 0.0), 1), mask=row_ok)


@triton.jit
def _level_mean(
    V,
    T,
    scale,
    bias,
    KL_ROWS,
    KL_LSE,
    rows,
    cols,
    row_ok,
    col_ok,
    R,
    Nc,
    D,
    G,
    HAS_BIAS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC: tl.constexpr,
):
    """log m = logsumexp_g log p^g - log G and the mean over levels of log p^g, [BM, BN]."""
    top = tl.full((BM, BN), -float("inf"), dtype=ACC)
    total = tl.zeros((BM, BN), dtype=ACC)
    log_sum = tl.zeros((BM, BN), dtype=ACC)
    for g in range(0, G):
        text_rows = tl.load(KL_ROWS + g * Nc + cols, mask=col_ok, other=0)
        z = _logits(V, T, scale, bias, rows, text_rows, row_ok, col_ok, D, HAS_BIAS, BM, BN, BK, ACC)
        log_p = z - tl.load(KL_LSE + g * R + rows, mask=row_ok, other=0.0)[:, None]
        new_top = tl.maximum(top, log_p)
        total = total * tl.exp(top - new_top) + tl.exp(log_p - new_top)
        top = new_top
        log_sum += log_p
    return top + tl.log(total / G), log_sum / G


@triton.jit
def smooth_kl_kernel(
    V,
    T,
    scale,
    bias,
    KL_ROWS,
    KL_LSE,
    KL_DOT,
    KL_TOTAL,
    R,
    Nc,
    D,
    G,
    HAS_BIAS: tl.constexpr,
    TO_MEAN: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per row and level: KL(p^g || m) (``TO_MEAN``), else <p^g, c> and G <m, c> with c = log m - mean_g log p^g."""
    rows, cols, row_ok, col_ok = _tile(R, Nc, BM, BN)
    valid = row_ok[:, None] & col_ok[None, :]
    log_mean, mean_log = _level_mean(
        V, T, scale, bias, KL_ROWS, KL_LSE, rows, cols, row_ok, col_ok, R, Nc, D, G, HAS_BIAS, BM, BN, BK, ACC
    )
    contrast = log_mean - mean_log
    if not TO_MEAN:
        tl.atomic_add(
            KL_TOTAL + rows, G * tl.sum(tl.where(valid, _exp(log_mean, valid) * contrast, 0.0), 1), mask=row_ok
        )
    for g in range(0, G):
        text_rows = tl.load(KL_ROWS + g * Nc + cols, mask=col_ok, other=0)
        z = _logits(V, T, scale, bias, rows, text_rows, row_ok, col_ok, D, HAS_BIAS, BM, BN, BK, ACC)
        log_p = z - tl.load(KL_LSE + g * R + rows, mask=row_ok, other=0.0)[:, None]
        p = _exp(log_p, valid)
        if TO_MEAN:
            term = p * (log_p - log_mean)
        else:
            term = p * contrast
        tl.atomic_add(KL_DOT + g * R + rows, tl.sum(tl.where(valid, term, 0.0), 1), mask=row_ok)


@triton.jit
def _scatter_gradient(
    dz,
    V,
    T,
    GRAD_V,
    GRAD_T,
    GRAD_BIAS,
    scale,
    rows,
    text_rows,
    row_ok,
    col_ok,
    D,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC: tl.constexpr,
):
    """dL/dV[rows] += s dz T[text_rows], dL/dT[text_rows] += s dz^T V[rows], dL/db += sum dz."""
    s = tl.load(scale)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < D
        v = tl.load(V + rows[:, None] * D + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        t = tl.load(T + text_rows[:, None] * D + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        grad_v = tl.dot(dz, t, input_precision="ieee", out_dtype=ACC) * s
        grad_t = tl.dot(tl.trans(dz), v, input_precision="ieee", out_dtype=ACC) * s
        tl.atomic_add(GRAD_V + rows[:, None] * D + ks[None, :], grad_v, mask=row_ok[:, None] & k_ok[None, :])
        tl.atomic_add(GRAD_T + text_rows[:, None] * D + ks[None, :], grad_t, mask=col_ok[:, None] & k_ok[None, :])
    tl.atomic_add(GRAD_BIAS, tl.sum(tl.sum(dz, 1), 0))


@triton.jit
def logit_grad_kernel(
    V,
    T,
    scale,
    bias,
    GRAD_V,
    GRAD_T,
    GRAD_BIAS,
    ROW_LSE,
    ROW_WEIGHT,
    ROW_COEF,
    COL_LSE,
    COL_WEIGHT,
    COL_COEF,
    SIGMOID_WEIGHT,
    KEYS_R,
    KEYS_C,
    LABELS_R,
    LABELS_C,
    COUNT_R,
    COUNT_C,
    DENSE,
    R,
    n,
    D,
    C,
    col_offset,
    HAS_BIAS: tl.constexpr,
    WITH_ROWS: tl.constexpr,
    WITH_COLS: tl.constexpr,
    WITH_SIGMOID: tl.constexpr,
    WITH_POSITIVES: tl.constexpr,
    MODE: tl.constexpr,
    MATCH: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
    ACC: tl.constexpr,
):
    """dz = w_i softmax_r + w'_j softmax_c + g sigmoid(z) - P (a_i + c_j) for one level's tile, sent to the features."""
    rows, cols, row_ok, col_ok = _tile(R, n, BM, BN)
    valid = row_ok[:, None] & col_ok[None, :]
    text_rows = col_offset + cols
    z = _logits(V, T, scale, bias, rows, text_rows, row_ok, col_ok, D, HAS_BIAS, BM, BN, BK, ACC)
    dz = tl.zeros((BM, BN), dtype=ACC)
    if WITH_ROWS:
        lse = tl.load(ROW_LSE + rows, mask=row_ok, other=0.0)
        dz += tl.load(ROW_WEIGHT + rows, mask=row_ok, other=0.0)[:, None] * _exp(z - lse[:, None], valid)
    if WITH_COLS:
        lse_c = tl.load(COL_LSE + cols, mask=col_ok, other=0.0)
        dz += tl.load(COL_WEIGHT + cols, mask=col_ok, other=0.0)[None, :] * _exp(z - lse_c[None, :], valid)
    if WITH_SIGMOID:
        dz += tl.load(SIGMOID_WEIGHT) * _sigmoid(z)
    if WITH_POSITIVES:
        positives = _positives(
            KEYS_R,
            KEYS_C,
            LABELS_R,
            LABELS_C,
            COUNT_R,
            COUNT_C,
            DENSE,
            rows,
            cols,
            row_ok,
            col_ok,
            n,
            C,
            MODE,
            MATCH,
            BM,
            BN,
            BC,
            ACC,
        )
        coef = tl.load(ROW_COEF + rows, mask=row_ok, other=0.0)[:, None]
        if WITH_COLS:
            coef += tl.load(COL_COEF + cols, mask=col_ok, other=0.0)[None, :]
        dz -= positives * coef
    dz = tl.where(valid, dz, 0.0)
    _scatter_gradient(dz, V, T, GRAD_V, GRAD_T, GRAD_BIAS, scale, rows, text_rows, row_ok, col_ok, D, BM, BN, BK, ACC)


@triton.jit
def smooth_kl_grad_kernel(
    V,
    T,
    scale,
    bias,
    GRAD_V,
    GRAD_T,
    GRAD_BIAS,
    KL_ROWS,
    KL_LSE,
    KL_DOT,
    KL_GRAD,
    R,
    Nc,
    D,
    G,
    HAS_BIAS: tl.constexpr,
    TO_MEAN: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC: tl.constexpr,
):
    """The smooth KL's gradient on every level's tile, sent to the features."""
    rows, cols, row_ok, col_ok = _tile(R, Nc, BM, BN)
    valid = row_ok[:, None] & col_ok[None, :]
    log_mean, mean_log = _level_mean(
        V, T, scale, bias, KL_ROWS, KL_LSE, rows, cols, row_ok, col_ok, R, Nc, D, G, HAS_BIAS, BM, BN, BK, ACC
    )
    contrast = log_mean - mean_log
    upstream = tl.load(KL_GRAD)
    for g in range(0, G):
        text_rows = tl.load(KL_ROWS + g * Nc + cols, mask=col_ok, other=0)
        z = _logits(V, T, scale, bias, rows, text_rows, row_ok, col_ok, D, HAS_BIAS, BM, BN, BK, ACC)
        log_p = z - tl.load(KL_LSE + g * R + rows, mask=row_ok, other=0.0)[:, None]
        p = _exp(log_p, valid)
        dot = tl.load(KL_DOT + g * R + rows, mask=row_ok, other=0.0)[:, None]
        if TO_MEAN:
            dz = p * (log_p - log_mean - dot)
        else:
            dz = p * (contrast - dot) + p - _exp(log_mean, valid)
        dz = tl.where(valid, dz * upstream, 0.0)
        _scatter_gradient(
            dz, V, T, GRAD_V, GRAD_T, GRAD_BIAS, scale, rows, text_rows, row_ok, col_ok, D, BM, BN, BK, ACC
        )
