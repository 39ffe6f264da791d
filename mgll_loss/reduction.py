"""Turn a backend's sums into means: divide by the counts, summed over every rank for a local loss.

A backend returns sums and counts (:class:`~mgll_loss.backends.LevelSums`), never means: with
``local_loss`` across ranks a rank sees only part of the rows and columns, and the loss is exact
only when the counts of every rank divide the sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .backends import LevelSums, LossInputs, LossTerms
from .distributed import World, all_reduce_sum

__all__ = ["LevelMeans", "level_means"]


@dataclass(frozen=True)
class LevelMeans:
    """Normalised, unweighted losses: soft CLIP and point-wise per level [G], smooth KL 0-dim (None: not requested)."""

    soft_clip: Tensor | None
    pointwise: Tensor | None
    smooth_kl: Tensor | None


def level_means(sums: LevelSums, problem: LossInputs, request: LossTerms, world: World, local_loss: bool) -> LevelMeans:
    """Divide a backend's sums by their counts.

    With ``local_loss`` across ranks the counts are summed over every rank and the result is
    multiplied by ``world_size``, so that the ranks' losses average to the global loss.
    """
    split = local_loss and world.is_distributed
    factor = float(world.world_size) if split else 1.0
    num_images = problem.image_features.shape[0]
    soft_clip = pointwise = smooth_kl = None
    soft_clip_sums = sums.soft_clip()
    if soft_clip_sums is not None:
        rows, row_count, cols, col_count = soft_clip_sums
        if split:  # one collective for both counts
            row_count, col_count = all_reduce_sum(torch.stack([row_count, col_count])).unbind(0)
        soft_clip = factor * 0.5 * (rows / row_count.clamp_min(1) + cols / col_count.clamp_min(1))
    if sums.pointwise is not None:
        pairs: int | Tensor = num_images
        sizes = problem.level_sizes
        if request.normalization == "pairs" and all(m is None for m in problem.text_masks) and len(set(sizes)) == 1:
            pairs = num_images * sizes[0]  # every text present: known on the host
        elif request.normalization == "pairs":  # counted on the device, without a host-to-device copy
            like = sums.pointwise
            present = [
                like.new_full((), n) if m is None else m.sum() for m, n in zip(problem.text_masks, sizes, strict=True)
            ]
            pairs = (num_images * torch.stack([p.to(like.dtype) for p in present])).clamp_min(1)
        pointwise = sums.pointwise * (factor / pairs) if isinstance(pairs, int) else factor * sums.pointwise / pairs
    if sums.smooth_kl is not None:
        smooth_kl = sums.smooth_kl * (factor / num_images)
    return LevelMeans(soft_clip, pointwise, smooth_kl)
