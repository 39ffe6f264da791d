"""Turn a backend's sums into the weighted loss terms, the counts summed over every rank for a local loss.

A backend returns sums and counts (:class:`~mgll_loss.backends.LevelSums`), never means: with
``local_loss`` across ranks a rank sees only part of the rows and columns, and the loss is exact
only when the counts of every rank divide the sums (:mod:`mgll_loss.backends.weighting`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import LevelSums, LossInputs, LossTerms, TermWeights, sum_weights, texts_present, weighted_terms
from .distributed import World, all_reduce_sum

__all__ = ["Terms", "terms_from_sums"]

Terms = tuple[Tensor | None, Tensor | None, Tensor | None]
"""The weighted soft CLIP, point-wise and smooth KL terms (0-dim each; None where a term is off)."""


def terms_from_sums(
    sums: LevelSums, problem: LossInputs, request: LossTerms, weights: TermWeights, world: World, local_loss: bool
) -> Terms:
    """Divide a backend's sums by their counts and weight them.

    With ``local_loss`` across ranks the counts are summed over every rank and every term is
    multiplied by ``world_size``, so that the ranks' losses average to the global loss.
    """
    split = local_loss and world.is_distributed
    soft_clip = sums.soft_clip()
    counts = None
    if soft_clip is not None:
        _, row_count, _, col_count = soft_clip
        if split:  # one collective for both counts
            row_count, col_count = all_reduce_sum(torch.stack([row_count, col_count])).unbind(0)
        counts = (row_count, col_count)
    scales = sum_weights(
        request,
        weights,
        counts=counts,
        texts_present=texts_present(problem, request),
        num_images=problem.image_features.shape[0],
        factor=float(world.world_size) if split else 1.0,
    )
    return weighted_terms(sums, scales)
