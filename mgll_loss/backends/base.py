"""What every backend receives (a validated :class:`LossProblem`) and returns (:class:`LevelLosses`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..targets import LevelTargets


@dataclass(frozen=True)
class LossRequest:
    """Which terms to compute, and their options.

    Attributes:
        soft_clip: compute the soft CLIP loss of every level.
        pointwise: compute the point-wise loss of every level.
        smooth_kl: compute the smooth KL across levels (needs G >= 2 and equal N_g).
        normalization: point-wise reduction, "pairs" (mean over present pairs) or "rows" (sum / B).
        pointwise_target: point-wise target, "mask" (P) or "row_normalized" (P / rowsum P).
        kl_direction: "to_mean" for KL(p^g || m), "from_mean" for KL(m || p^g).
    """

    soft_clip: bool = True
    pointwise: bool = True
    smooth_kl: bool = True
    normalization: str = "pairs"
    pointwise_target: str = "mask"
    kl_direction: str = "to_mean"


@dataclass(frozen=True)
class LossProblem:
    """Validated inputs of a multi-level loss.

    Attributes:
        image_features: V, [B, D].
        text_features: the G levels of texts stacked along rows, [sum_g N_g, D].
        level_sizes: N_g for each level (G entries).
        logit_scale: s, 0-dim (already exponentiated).
        logit_bias: b, 0-dim, or None.
        targets: one :class:`LevelTargets` per level.
        text_masks: one bool [N_g] mask (True = text present) or None per level.
        compute_dtype: float32, or float64 when an input is float64.
    """

    image_features: Tensor
    text_features: Tensor
    level_sizes: Tuple[int, ...]
    logit_scale: Tensor
    logit_bias: Optional[Tensor]
    targets: Tuple[LevelTargets, ...]
    text_masks: Tuple[Optional[Tensor], ...]
    compute_dtype: torch.dtype

    @property
    def num_levels(self) -> int:
        """G."""
        return len(self.level_sizes)


@dataclass(frozen=True)
class LevelLosses:
    """A backend's result: unweighted losses, each None when not requested.

    Attributes:
        soft_clip: soft CLIP loss per level, [G].
        pointwise: point-wise loss per level, [G].
        smooth_kl: smooth KL summed over levels, 0-dim.
    """

    soft_clip: Optional[Tensor]
    pointwise: Optional[Tensor]
    smooth_kl: Optional[Tensor]
