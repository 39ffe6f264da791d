"""The batched backend: every level in one tensor of logits [B, G, N], static shapes, plain autograd.

The logits of all G levels come from one matmul, ``s * V @ [T^1; ...; T^G]^T + b``, viewed as
[B, G, N]; the positives of every level are stacked the same way from
:meth:`~mgll_loss.targets.LevelTargets.full`. One row log-sum-exp per (image, level) serves the
soft CLIP rows and the smooth KL, one column log-sum-exp per (level, text) the soft CLIP columns,
and the sums of positive logits serve the soft CLIP and the point-wise terms:

- soft CLIP row i of level g (``mass_i = sum_j P_ij > 0``): ``lse_i - sum_j P_ij z_ij / mass_i``;
  columns likewise;
- point-wise: ``sum_ij softplus(z_ij) - sum_ij y_ij z_ij``, y = P or P / mass (row-normalised);
- smooth KL: ``log p^g = z^g - lse^g``, ``log m = logsumexp_g log p^g - log G``.

Absent texts (``text_mask``) and the padding of levels with fewer texts are masked, never
removed, so every shape depends only on the input shapes: no host reads, no data-dependent
shapes, one graph under ``torch.compile(fullgraph=True)``. Masked logits are replaced by the
most negative finite number of the compute dtype (not ``-inf``), so a row with every text
absent stays finite and drops out of the means. Memory O(B * G * N): for small and medium
problems, where the per-block bookkeeping of the fused backends costs more than the arithmetic.
The backward is autograd's: a hand-written one (one ``dL/dz`` for every level, two matmuls)
showed no clear gain on CPU (docs/backends.md), and autograd lets ``torch.compile`` fuse both passes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LevelSums, LossProblem, LossRequest

__all__ = ["batched_level_sums"]

_SOFTPLUS_THRESHOLD = 40.0  # softplus(z) = z above it: exact to exp(-40) ~ 4e-18, also for float64


def batched_level_sums(problem: LossProblem, request: LossRequest, chunk_size: int | None = None) -> LevelSums:
    """The sums of ``problem`` from one [B, G, N] tensor of logits (``chunk_size`` is ignored)."""
    width = max(problem.level_sizes)
    logits = _logits(problem, width)
    valid = _valid_columns(problem, width)
    every_row = problem.row_range == slice(0, logits.shape[0])

    def row_part(tensor: Tensor) -> Tensor:  # this process's rows (a full slice would add an operator and its backward)
        return tensor if every_row else tensor[problem.row_range]

    row_logits = row_part(logits)
    masked = _masked(row_logits, valid)
    row_lse = torch.logsumexp(masked, -1)  # [R, G], shared by the soft CLIP rows and the smooth KL
    sums: dict[str, Tensor] = {}
    if request.soft_clip or request.pointwise:
        positives = _positives(problem, width, valid)  # [B, G, N], zero on absent texts
        weighted = positives * logits
        row_pz = row_part(weighted).sum(-1)  # [R, G]
        row_inverse = _inverse_mass(row_part(positives).sum(-1))
        if request.soft_clip:
            has_row = row_inverse > 0
            sums["soft_clip_rows"] = (row_lse * has_row - row_pz * row_inverse).sum(0)
            sums["soft_clip_row_count"] = has_row.sum(0)
            sums["soft_clip_cols"], sums["soft_clip_col_count"] = _column_sums(problem, logits, positives, weighted)
        if request.pointwise:
            softplus = F.softplus(masked, threshold=_SOFTPLUS_THRESHOLD)  # 0 on absent columns
            target_z = row_pz if request.pointwise_target == "mask" else row_pz * row_inverse
            sums["pointwise"] = softplus.sum((0, 2)) - target_z.sum(0)
    if request.smooth_kl:
        sums["smooth_kl"] = _smooth_kl(row_logits, row_lse, valid, request.kl_direction)
    return LevelSums(**sums)


def _logits(problem: LossProblem, width: int) -> Tensor:
    """``s * V @ T^T + b`` for every level, [B, G, width], in the compute dtype (padded levels: zero texts)."""
    dtype = problem.compute_dtype
    images, texts = _as(problem.image_features, dtype), _as(problem.text_features, dtype)
    if any(n != width for n in problem.level_sizes):
        texts = torch.cat([_pad(t, width, rows=True) for t in texts.split(problem.level_sizes)])
    products = images @ texts.t()
    scale = _as(problem.logit_scale, dtype)
    if problem.logit_bias is None:
        logits = products * scale
    else:
        logits = torch.addcmul(_as(problem.logit_bias, dtype), products, scale)
    return logits.view(images.shape[0], problem.num_levels, width)


def _valid_columns(problem: LossProblem, width: int) -> Tensor | None:
    """bool [G, width]: present texts (not masked out, not padding); None when every column is valid."""
    if all(m is None for m in problem.text_masks) and all(n == width for n in problem.level_sizes):
        return None
    device = problem.image_features.device
    columns = []
    for mask, size in zip(problem.text_masks, problem.level_sizes, strict=True):
        present = torch.ones(size, dtype=torch.bool, device=device) if mask is None else mask
        columns.append(_pad(present, width))
    return torch.stack(columns)


def _positives(problem: LossProblem, width: int, valid: Tensor | None) -> Tensor:
    """P of every level, [B, G, width], zero on absent and padding columns."""
    dtype, device = problem.compute_dtype, problem.image_features.device
    levels = [t.full(dtype, device) for t in problem.targets]
    positives = torch.stack([_pad(p, width) for p in levels], 1)
    return positives if valid is None else positives * valid


def _as(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype`` (no operator at all when it already is)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _pad(tensor: Tensor, width: int, rows: bool = False) -> Tensor:
    """``tensor`` zero-padded to ``width`` columns (rows, with ``rows``); itself when nothing is missing."""
    missing = width - tensor.shape[0 if rows else -1]
    if missing == 0:
        return tensor
    return F.pad(tensor, (0, 0, 0, missing) if rows else (0, missing))


def _masked(logits: Tensor, valid: Tensor | None) -> Tensor:
    """``logits`` with the columns that are not ``valid`` set to the most negative finite number."""
    return logits if valid is None else logits.masked_fill(~valid, torch.finfo(logits.dtype).min)


def _inverse_mass(mass: Tensor) -> Tensor:
    """1 / mass where mass > 0, else 0."""
    has = mass > 0
    return has / torch.where(has, mass, 1.0)


def _column_sums(problem: LossProblem, logits: Tensor, positives: Tensor, weighted: Tensor) -> tuple[Tensor, Tensor]:
    """Soft CLIP column sums and counts [G] over every image, for each level's columns in ``column_ranges``."""
    column_lse = torch.logsumexp(logits, 0)  # [G, width]; padding and absent columns have no positive
    inverse = _inverse_mass(positives.sum(0))
    has = inverse > 0
    terms = column_lse * has - weighted.sum(0) * inverse
    if not problem.is_local:
        return terms.sum(1), has.sum(1)
    ranges = problem.column_ranges
    return (
        torch.stack([terms[g, r].sum() for g, r in enumerate(ranges)]),
        torch.stack([has[g, r].sum() for g, r in enumerate(ranges)]),
    )


def _smooth_kl(logits: Tensor, lse: Tensor, valid: Tensor | None, direction: str) -> Tensor:
    """Sum over rows and levels of the smooth KL, on the columns present in every level."""
    if valid is None:
        log_probs = logits - lse[..., None]
        probs = log_probs.exp()
        common = None
    else:  # absent columns: log p = 0 and p = 0, so that they add exactly nothing
        common = valid.all(0)
        masked = _masked(logits, common)
        log_probs = (masked - torch.logsumexp(masked, -1, keepdim=True)).masked_fill(~common, 0.0)
        probs = log_probs.exp() * common
    levels = logits.shape[1]
    log_mean = torch.logsumexp(log_probs, 1, keepdim=True) - math.log(levels)
    if direction == "to_mean":
        total = (probs * (log_probs - log_mean)).sum()
    else:
        mean = probs.mean(1, keepdim=True)
        total = levels * (mean * (log_mean - log_probs.mean(1, keepdim=True))).sum()
    return total if common is None else total * common.any()  # no column in every level: no smooth KL
