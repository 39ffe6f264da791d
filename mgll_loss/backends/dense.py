"""Dense backend: the logits of all G levels from one matmul, then each term in closed form.

Memory is O(B * sum_g N_g): right for small and medium batches. Absent texts get the most
negative finite logit, so they carry no probability, no loss and no gradient, and no NaN can
arise even when a whole row is absent.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LevelSums, LossProblem, LossRequest


def dense_level_sums(problem: LossProblem, request: LossRequest) -> LevelSums:
    """Compute the requested sums of ``problem`` with full logit matrices."""
    dtype, device = problem.compute_dtype, problem.image_features.device
    floor = torch.finfo(dtype).min
    all_images = slice(0, problem.image_features.shape[0])
    local = problem.is_local
    row_logits, column_logits = _level_logits(problem, with_columns=local and request.soft_clip)
    has_masks = any(mask is not None for mask in problem.text_masks)
    row_ce, row_count, col_ce, col_count, pointwise, row_log_probs = [], [], [], [], [], []
    for level, targets in enumerate(problem.targets):
        present = problem.text_masks[level]
        z_rows = _mask_columns(row_logits[level], present, floor)
        p_rows = _masked(targets.tile(problem.row_range, slice(0, problem.level_sizes[level]), dtype, device), present)
        if request.soft_clip or (request.smooth_kl and not has_masks):
            row_log_probs.append(z_rows.log_softmax(dim=1))
        if request.soft_clip:
            _append(row_ce, row_count, _soft_cross_entropy_sum(p_rows, row_log_probs[-1], dim=1))
            z_cols, p_cols = z_rows, p_rows
            if local:
                columns = problem.column_ranges[level]
                local_present = None if present is None else present[columns]
                z_cols = _mask_columns(column_logits[level], local_present, floor)
                p_cols = _masked(targets.tile(all_images, columns, dtype, device), local_present)
            _append(col_ce, col_count, _soft_cross_entropy_sum(p_cols, z_cols.log_softmax(dim=0), dim=0))
        if request.pointwise:
            pointwise.append(_pointwise_sum(z_rows, p_rows, request.pointwise_target))
    smooth_kl = None
    if request.smooth_kl:
        if has_masks:
            row_log_probs = _common_column_log_probs(row_logits, problem.text_masks, floor)
        smooth_kl = _smooth_kl_sum(torch.stack(row_log_probs), request.kl_direction)
    return LevelSums(
        soft_clip_rows=_stack(row_ce),
        soft_clip_row_count=_stack(row_count),
        soft_clip_cols=_stack(col_ce),
        soft_clip_col_count=_stack(col_count),
        pointwise=_stack(pointwise),
        smooth_kl=smooth_kl,
    )


def _level_logits(problem: LossProblem, with_columns: bool) -> Tuple[List[Tensor], Optional[List[Tensor]]]:
    """Row-block logits z^g[rows, :] for every level from one matmul, and the column block if asked.

    z^g = s * V T_g^T (+ b); the column block z^g[:, columns_g] is only needed by the soft CLIP
    columns of a local problem.
    """
    dtype = problem.compute_dtype
    images = problem.image_features.to(dtype) * problem.logit_scale.to(dtype)
    texts = problem.text_features.to(dtype)
    bias = None if problem.logit_bias is None else problem.logit_bias.to(dtype)
    rows = _logits(images[problem.row_range], texts, bias).split(problem.level_sizes, dim=1)
    if not with_columns:
        return list(rows), None
    levels = texts.split(problem.level_sizes)
    local_texts = torch.cat([level[columns] for level, columns in zip(levels, problem.column_ranges)])
    local_sizes = [columns.stop - columns.start for columns in problem.column_ranges]
    return list(rows), list(_logits(images, local_texts, bias).split(local_sizes, dim=1))


def _logits(scaled_images: Tensor, texts: Tensor, bias: Optional[Tensor]) -> Tensor:
    return scaled_images @ texts.t() if bias is None else torch.addmm(bias, scaled_images, texts.t())


def _mask_columns(z: Tensor, present: Optional[Tensor], floor: float) -> Tensor:
    return z if present is None else z.masked_fill(~present, floor)


def _masked(positives: Tensor, present: Optional[Tensor]) -> Tensor:
    return positives if present is None else positives * present


def _append(totals: List[Tensor], counts: List[Tensor], result: Tuple[Tensor, Tensor]) -> None:
    totals.append(result[0])
    counts.append(result[1])


def _stack(values: Sequence[Tensor]) -> Optional[Tensor]:
    return torch.stack(list(values)) if values else None


def _soft_cross_entropy_sum(positives: Tensor, log_probs: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """Sum and count over rows (dim=1) or columns (dim=0) with a positive of -sum_k W_k log p_k, W = P / sum P."""
    mass = positives.sum(dim)
    has_positive = mass > 0
    per_item = -(positives * log_probs).sum(dim) / torch.where(has_positive, mass, torch.ones_like(mass))
    return per_item.sum(), has_positive.sum().to(per_item.dtype)


def _pointwise_sum(z: Tensor, positives: Tensor, target_kind: str) -> Tensor:
    """Sum of binary cross-entropy with logits over every pair (absent columns contribute exactly 0)."""
    target = positives
    if target_kind == "row_normalized":
        mass = positives.sum(dim=1, keepdim=True)
        target = positives / torch.where(mass > 0, mass, torch.ones_like(mass))
    return F.binary_cross_entropy_with_logits(z, target, reduction="sum")


def _common_column_log_probs(logits: List[Tensor], text_masks: Sequence[Optional[Tensor]], floor: float) -> List[Tensor]:
    """Row log-softmax of every level over the columns present in every level."""
    common = None
    for mask in text_masks:
        if mask is not None:
            common = mask if common is None else common & mask
    return [z.masked_fill(~common, floor).log_softmax(dim=1) for z in logits]


def _smooth_kl_sum(log_probs: Tensor, direction: str) -> Tensor:
    """sum_g sum_i KL between p^g_i and m_i = mean_g p^g_i, from log-probabilities [G, R, N]."""
    log_mean = torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
    if direction == "to_mean":
        divergence = F.kl_div(log_mean.expand_as(log_probs), log_probs, reduction="none", log_target=True)
    else:
        divergence = F.kl_div(log_probs, log_mean.expand_as(log_probs), reduction="none", log_target=True)
    return divergence.sum()
