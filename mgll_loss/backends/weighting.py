"""From a backend's sums to the weighted loss terms: divide by the counts, weight the terms and the levels.

Every sum is multiplied by one weight that holds its normaliser and its term and level weights,
so each term is linear in the sums (the counts carry no gradient):

- soft CLIP: ``a_1 sum_g w_g (rows_g / max(n_rows_g, 1) + cols_g / max(n_cols_g, 1)) / 2``, with
  n the rows (columns) that have a positive;
- point-wise: ``a_2 sum_g w_g pointwise_g / pairs_g``, pairs = B times the texts present in level g
  (``normalization="pairs"``) or B (``"rows"``);
- smooth KL: ``a_3 smooth_kl / B``.

``factor`` multiplies every term: the world size for a local loss across ranks (whose counts are
then summed over the ranks), so that the ranks' losses average to the global loss; else 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import LevelSums, LossInputs, LossTerms

__all__ = ["SumWeights", "TermWeights", "sum_gradients", "sum_weights", "texts_present", "weighted_terms"]


@dataclass(frozen=True)
class TermWeights:
    """The weights of the loss terms (a_1, a_2, a_3 of the paper's Eq. 7) and of the levels (w_g)."""

    soft_clip: float
    pointwise: float
    smooth_kl: float
    levels: tuple[float, ...]


@dataclass(frozen=True)
class SumWeights:
    """What multiplies each sum of :class:`LevelSums` ([G] tensors or numbers; None for a term that is off).

    ``levels`` holds level weights that are not all equal (None: equal, and already multiplied in):
    they stay Python numbers and multiply one level each, never as a tensor copied from the host
    (a copy to a GPU would synchronise it with the host).
    """

    soft_clip_rows: Tensor | None = None
    soft_clip_cols: Tensor | None = None
    pointwise: Tensor | float | None = None
    smooth_kl: float | None = None
    levels: tuple[float, ...] | None = None


def sum_weights(
    request: LossTerms,
    weights: TermWeights,
    *,
    counts: tuple[Tensor, Tensor] | None,
    texts_present: int | Tensor,
    num_images: int,
    factor: float = 1.0,
) -> SumWeights:
    """The weights of the sums of ``request``'s terms.

    Args:
        counts: the soft CLIP row and column counts ([G] each, floating point), None when the term is off.
        texts_present: N when every level has N texts present, else the texts present per level [G].
        num_images: B, the rows of the whole loss.
        factor: multiplies every term (see the module docstring).
    """
    uniform = len(set(weights.levels)) == 1
    level = weights.levels[0] if uniform else 1.0
    rows = cols = None
    pointwise: Tensor | float | None = None
    smooth_kl: float | None = None
    if request.soft_clip and counts is not None:
        scale = 0.5 * factor * weights.soft_clip * level
        rows, cols = (count.clamp_min(1).reciprocal() * scale for count in counts)  # not scale / count: slower
    if request.pointwise:
        scale = factor * weights.pointwise * level
        if request.normalization == "rows":
            pointwise = scale / num_images
        elif isinstance(texts_present, int):
            pointwise = scale / (num_images * texts_present)
        else:
            pointwise = (num_images * texts_present).clamp_min(1).reciprocal() * scale
    if request.smooth_kl:
        smooth_kl = factor * weights.smooth_kl / num_images
    return SumWeights(rows, cols, pointwise, smooth_kl, None if uniform else weights.levels)


def texts_present(problem: LossInputs, request: LossTerms) -> int | Tensor:
    """The ``texts_present`` of :func:`sum_weights`: N, or [G] counted on the device (no host read).

    0 where ``request`` does not divide by it (no point-wise term, or ``normalization="rows"``).
    """
    if not request.pointwise or request.normalization != "pairs":
        return 0
    sizes, masks = problem.level_sizes, problem.text_masks
    if all(m is None for m in masks) and len(set(sizes)) == 1:
        return sizes[0]
    dtype, device = problem.compute_dtype, problem.image_features.device
    present = [
        torch.full((), n, dtype=dtype, device=device) if m is None else m.sum().to(dtype)
        for m, n in zip(masks, sizes, strict=True)
    ]
    return torch.stack(present)


def weighted_terms(sums: LevelSums, weights: SumWeights) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The soft CLIP, point-wise and smooth KL terms (0-dim each; None where a term is off)."""
    soft_clip = pointwise = smooth_kl = None
    levels = weights.levels
    if sums.soft_clip_rows is not None and sums.soft_clip_cols is not None:
        rows, cols = weights.soft_clip_rows, weights.soft_clip_cols
        if rows is None or cols is None:
            raise ValueError("weighted_terms: the soft CLIP sums came without their weights")
        if levels is None:
            soft_clip = torch.dot(sums.soft_clip_rows, rows) + torch.dot(sums.soft_clip_cols, cols)
        else:
            soft_clip = _level_sum(sums.soft_clip_rows * rows + sums.soft_clip_cols * cols, levels)
    if sums.pointwise is not None and weights.pointwise is not None:
        if levels is not None:
            pointwise = _level_sum(sums.pointwise * weights.pointwise, levels)
        elif isinstance(weights.pointwise, Tensor):
            pointwise = torch.dot(sums.pointwise, weights.pointwise)
        else:
            pointwise = _times(weights.pointwise, sums.pointwise.sum())
    if sums.smooth_kl is not None and weights.smooth_kl is not None:
        smooth_kl = _times(weights.smooth_kl, sums.smooth_kl)
    return soft_clip, pointwise, smooth_kl


def sum_gradients(
    weights: SumWeights, grads: tuple[Tensor | None, Tensor | None, Tensor | None], num_levels: int
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of the soft CLIP rows, columns, point-wise ([G] each) and smooth KL (0-dim) sums.

    ``grads`` are the upstream gradients of the three terms of :func:`weighted_terms` (None: unused).
    """
    soft_clip, pointwise, smooth_kl = grads
    rows = cols = pointwise_sums = smooth_kl_sum = None
    if soft_clip is not None and weights.soft_clip_rows is not None and weights.soft_clip_cols is not None:
        rows = _per_level(soft_clip * weights.soft_clip_rows, weights.levels, num_levels)
        cols = _per_level(soft_clip * weights.soft_clip_cols, weights.levels, num_levels)
    if pointwise is not None and weights.pointwise is not None:
        pointwise_sums = _per_level(pointwise * weights.pointwise, weights.levels, num_levels)
    if smooth_kl is not None and weights.smooth_kl is not None:
        smooth_kl_sum = _times(weights.smooth_kl, smooth_kl)
    return rows, cols, pointwise_sums, smooth_kl_sum


def _level_sum(per_level: Tensor, levels: tuple[float, ...]) -> Tensor:
    """``sum_g w_g x_g`` of a [G] tensor."""
    terms = [w * x for w, x in zip(levels, per_level.unbind(0), strict=True)]
    return torch.stack(terms).sum()


def _per_level(value: Tensor, levels: tuple[float, ...] | None, num_levels: int) -> Tensor:
    """``value`` (0-dim or [G]) as [G], times each level's weight when ``levels`` is not None."""
    if value.dim() == 0:
        value = value.expand(num_levels)
    if levels is None:
        return value
    return torch.stack([x * w for x, w in zip(value.unbind(0), levels, strict=True)])


def _times(weight: float, value: Tensor) -> Tensor:
    """``weight * value``, without an operator for a weight of 1."""
    return value if weight == 1.0 else weight * value
