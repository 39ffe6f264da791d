"""Dense backend: the logits of all G levels from one matmul, then each term in closed form.

Memory is O(B * sum_g N_g): right for small and medium batches.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LevelLosses, LossProblem, LossRequest


def dense_level_losses(problem: LossProblem, request: LossRequest) -> LevelLosses:
    """Compute the requested terms of ``problem`` with full [B, N_g] logit matrices."""
    logits = _all_level_logits(problem)
    floor = torch.finfo(problem.compute_dtype).min
    soft_clip: List[Tensor] = []
    pointwise: List[Tensor] = []
    row_log_probs: List[Tensor] = []
    has_masks = any(mask is not None for mask in problem.text_masks)
    for level, z in enumerate(logits):
        present = problem.text_masks[level]
        positives = problem.targets[level].full(problem.compute_dtype, z.device)
        if present is not None:
            z = z.masked_fill(~present, floor)
            positives = positives * present
        if request.soft_clip or (request.smooth_kl and not has_masks):
            row_log_probs.append(z.log_softmax(dim=1))
        if request.soft_clip:
            rows = _soft_cross_entropy(positives, row_log_probs[-1], dim=1)
            cols = _soft_cross_entropy(positives, z.log_softmax(dim=0), dim=0)
            soft_clip.append(0.5 * (rows + cols))
        if request.pointwise:
            pointwise.append(_pointwise(z, positives, present, request))
    smooth_kl = None
    if request.smooth_kl:
        if has_masks:
            row_log_probs = _common_column_log_probs(logits, problem.text_masks, floor)
        smooth_kl = _smooth_kl(torch.stack(row_log_probs), request.kl_direction)
    return LevelLosses(
        soft_clip=torch.stack(soft_clip) if request.soft_clip else None,
        pointwise=torch.stack(pointwise) if request.pointwise else None,
        smooth_kl=smooth_kl,
    )


def _all_level_logits(problem: LossProblem) -> List[Tensor]:
    """z^g = s * V T_g^T (+ b) for every level from a single [B, D] x [D, sum N_g] matmul."""
    dtype = problem.compute_dtype
    scaled_images = problem.image_features.to(dtype) * problem.logit_scale.to(dtype)
    logits = scaled_images @ problem.text_features.to(dtype).t()
    if problem.logit_bias is not None:
        logits = logits + problem.logit_bias.to(dtype)
    return list(logits.split(problem.level_sizes, dim=1))


def _soft_cross_entropy(positives: Tensor, log_probs: Tensor, dim: int) -> Tensor:
    """Mean over rows (dim=1) or columns (dim=0) with a positive of -sum_k W_k log p_k, W = P / sum P."""
    mass = positives.sum(dim)
    has_positive = mass > 0
    per_item = -(positives * log_probs).sum(dim) / torch.where(has_positive, mass, torch.ones_like(mass))
    return per_item.sum() / has_positive.sum().clamp_min(1)


def _pointwise(z: Tensor, positives: Tensor, present: Optional[Tensor], request: LossRequest) -> Tensor:
    """Binary cross-entropy with logits on every present pair (absent columns hold -inf-like logits: 0 loss)."""
    target = positives
    if request.pointwise_target == "row_normalized":
        mass = positives.sum(dim=1, keepdim=True)
        target = positives / torch.where(mass > 0, mass, torch.ones_like(mass))
    total = F.binary_cross_entropy_with_logits(z, target, reduction="sum")
    num_images = z.shape[0]
    if request.normalization == "rows":
        return total / num_images
    num_present = z.shape[1] if present is None else present.sum().clamp_min(1)
    return total / (num_images * num_present)


def _common_column_log_probs(logits: List[Tensor], text_masks, floor: float) -> List[Tensor]:
    """Row log-softmax of every level over the columns present in every level."""
    common = None
    for mask in text_masks:
        if mask is not None:
            common = mask if common is None else common & mask
    return [z.masked_fill(~common, floor).log_softmax(dim=1) for z in logits]


def _smooth_kl(log_probs: Tensor, direction: str) -> Tensor:
    """sum_g mean_i KL between p^g_i and m_i = mean_g p^g_i, from log-probabilities [G, B, N]."""
    log_mean = torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
    if direction == "to_mean":
        divergence = F.kl_div(log_mean.expand_as(log_probs), log_probs, reduction="none", log_target=True)
    else:
        divergence = F.kl_div(log_probs, log_mean.expand_as(log_probs), reduction="none", log_target=True)
    return divergence.sum(dim=2).mean(dim=1).sum()
