"""What every backend receives (a validated :class:`LossInputs`) and returns (:class:`LevelSums`).

Backends return sums and counts, not means: the caller divides by counts that may span every
rank (see :mod:`mgll_loss.global_batch`), which keeps distributed losses exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..positives import LevelTargets


@dataclass(frozen=True)
class LossTerms:
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
class LossInputs:
    """Validated inputs of a multi-level loss.

    Attributes:
        image_features: V, [B, D].
        text_features: the G levels of texts stacked along rows, [sum_g N_g, D].
        level_sizes: N_g for each level (G entries).
        logit_scale: s, 0-dim (already exponentiated).
        logit_bias: b, 0-dim, or None.
        targets: one :class:`LevelTargets` per level.
        text_masks: one bool [N_g] mask (True = text present) or None per level.
        compute_dtype: float32, or float64 when the image or text features are float64.
        row_range: the rows (images) this process computes row-direction terms for; all by default.
        column_ranges: per level, the columns (texts) it computes column-direction terms for.

    Row-direction terms (soft CLIP rows, point-wise, smooth KL) use ``row_range`` against every
    column; the soft CLIP column term uses every row against ``column_ranges``. With full ranges
    one [B, N_g] matrix serves both.
    """

    image_features: Tensor
    text_features: Tensor
    level_sizes: tuple[int, ...]
    logit_scale: Tensor
    logit_bias: Tensor | None
    targets: tuple[LevelTargets, ...]
    text_masks: tuple[Tensor | None, ...]
    compute_dtype: torch.dtype
    row_range: slice
    column_ranges: tuple[slice, ...]

    @property
    def num_levels(self) -> int:
        """G."""
        return len(self.level_sizes)

    @property
    def is_local(self) -> bool:
        """True when the row or column ranges are not the whole matrix."""
        full_rows = self.row_range == slice(0, self.image_features.shape[0])
        return not full_rows or any(r != slice(0, n) for r, n in zip(self.column_ranges, self.level_sizes, strict=True))


@dataclass(frozen=True)
class LevelSums:
    """A backend's result: unnormalised sums and the counts to divide them by.

    Attributes:
        soft_clip_rows: per level, sum over rows with a positive of the row cross-entropy, [G].
        soft_clip_row_count: per level, number of such rows, [G].
        soft_clip_cols: per level, sum over columns with a positive of the column cross-entropy, [G].
        soft_clip_col_count: per level, number of such columns, [G].
        pointwise: per level, sum of the binary cross-entropy over present pairs, [G].
        smooth_kl: sum over levels and rows of the KL divergence, 0-dim.

    A field is None when its term was not requested.
    """

    soft_clip_rows: Tensor | None = None
    soft_clip_row_count: Tensor | None = None
    soft_clip_cols: Tensor | None = None
    soft_clip_col_count: Tensor | None = None
    pointwise: Tensor | None = None
    smooth_kl: Tensor | None = None

    def soft_clip(self) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """The soft CLIP fields (rows, row count, columns, column count), or None when the term is off."""
        rows, row_count = self.soft_clip_rows, self.soft_clip_row_count
        cols, col_count = self.soft_clip_cols, self.soft_clip_col_count
        if rows is None and row_count is None and cols is None and col_count is None:
            return None
        if rows is None or row_count is None or cols is None or col_count is None:
            raise ValueError("LevelSums: the four soft_clip_* fields are set together or not at all")
        return rows, row_count, cols, col_count


@dataclass
class DirectionSums:
    """A direction's sums: soft CLIP rows / columns with their counts and point-wise per level [G], smooth KL 0-dim."""

    row_ce: Tensor
    row_count: Tensor
    col_ce: Tensor
    col_count: Tensor
    pointwise: Tensor
    smooth_kl: Tensor

    def as_tuple(self) -> tuple[Tensor, ...]:
        return self.row_ce, self.row_count, self.col_ce, self.col_count, self.pointwise, self.smooth_kl

    @classmethod
    def zeros(cls, levels: int, dtype: torch.dtype, device: torch.device) -> DirectionSums:
        """All sums zero ([G] each, smooth KL 0-dim)."""
        return cls(*(torch.zeros(shape, dtype=dtype, device=device) for shape in ((levels,),) * 5 + ((),)))

    @classmethod
    def upstream(
        cls, grads: tuple[Tensor | None, ...], levels: int, dtype: torch.dtype, device: torch.device
    ) -> DirectionSums:
        """The gradients a backward receives for the sums, zeros where a sum was unused (None)."""
        zeros = cls.zeros(levels, dtype, device).as_tuple()
        return cls(*(zero if grad is None else grad.to(dtype) for grad, zero in zip(grads, zeros, strict=True)))


def refuse_second_derivatives(backend: str) -> None:
    """Raise in a backward that is not differentiable when autograd asks for one (``create_graph=True``).

    Without this its gradients would come back as constants, and a penalty on them would silently
    lose its second-order part.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"backend={backend!r}: second derivatives (create_graph=True) are not supported by the dense, "
            "chunked and triton backends, whose backward is not differentiable; use backend='batched' "
            "(exact second derivatives)"
        )
