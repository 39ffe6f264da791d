"""Lay a :class:`LossInputs` out as directions: the sub-problems the dense, chunked and triton backends walk.

A direction is image-to-text (rows: images, against the present texts of every level concatenated
into one column space) or text-to-image (rows: one level's texts, against the images; transposed).
Absent texts are dropped before the matmul, so no backend ever masks a logit. Two layouts:

- the whole problem (one process, or ``local_loss=False``): one direction over every image
  computes row and column soft CLIP, point-wise and smooth KL terms together;
- a local problem (``local_loss=True`` across ranks): a direction over this rank's images against
  every text (row terms), and per level a transposed direction over this rank's texts against
  every image (text-to-image: the soft CLIP column term of the original).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..positives import Index, LevelTargets
from .base import DirectionSums, LevelSums, LossInputs, LossTerms
from .label_keys import LabelKeys


def compose(outer: Index | None, inner: Index) -> Index:
    """Index ``outer`` by ``inner``: positions of a sub-range mapped back to the full range."""
    if outer is None:
        return inner
    if isinstance(outer, slice):
        if isinstance(inner, slice):
            return slice(outer.start + inner.start, outer.start + inner.stop)
        return inner + outer.start
    return outer[inner]


class TargetView:
    """A level's positive mask seen from a direction: rows and columns mapped into the level's mask.

    Args:
        source: the level's targets, P [B, N].
        row_map: maps direction rows to mask rows (or to mask columns when ``transposed``); None: identity.
        col_map: maps direction columns to mask columns (or to mask rows when ``transposed``); None: identity.
        transposed: the direction runs over texts, so its tile is ``P[cols, rows]^T``.
    """

    def __init__(
        self, source: LevelTargets, row_map: Index | None, col_map: Index | None, transposed: bool = False
    ) -> None:
        self.source = source
        self.row_map = row_map
        self.col_map = col_map
        self.transposed = transposed

    def tile(self, rows: Index, cols: Index, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The direction's positives for ``rows`` x ``cols``, [len(rows), len(cols)]."""
        mapped_rows, mapped_cols = compose(self.row_map, rows), compose(self.col_map, cols)
        if self.transposed:
            return self.source.tile(mapped_cols, mapped_rows, dtype, device).t()
        return self.source.tile(mapped_rows, mapped_cols, dtype, device)

    def keys(self, num_rows: int, num_cols: int, device: torch.device) -> LabelKeys | None:
        """Label keys of the whole level (see :meth:`LevelTargets.keys`), renumbered 0..K-1; None if P has none."""
        rows, cols = compose(self.row_map, slice(0, num_rows)), compose(self.col_map, slice(0, num_cols))
        keys = self.source.keys(cols, rows, device) if self.transposed else self.source.keys(rows, cols, device)
        if keys is None:
            return None
        row_keys, col_keys = keys[::-1] if self.transposed else keys
        unique, dense = torch.unique(torch.cat([row_keys, col_keys]), return_inverse=True)
        return LabelKeys.build(dense[:num_rows], dense[num_rows:], unique.shape[0])


@dataclass(frozen=True)
class DirectionLevel:
    """One level's present texts in a direction: columns ``offset : offset + size`` of the direction's logits.

    With ``keys`` the positives are handled in feature space (:mod:`.label_keys`) and never tiled.
    """

    offset: int
    size: int
    targets: TargetView
    keys: LabelKeys | None

    @property
    def columns(self) -> slice:
        """This level's columns in the direction's logits."""
        return slice(self.offset, self.offset + self.size)


@dataclass(frozen=True)
class Direction:
    """Rows against the concatenated present texts of every level, and the terms to compute.

    Attributes:
        images: the rows, [R, D] (texts in a transposed direction).
        texts: the columns of every level, concatenated, [sum_g n_g, D] (images in a transposed direction).
        scale, bias: s (0-dim) and b (0-dim or None); logits are ``s * images @ texts.T + b``.
        levels: the column block of each level.
        kl_columns: per level, the positions (within the level's columns) of the texts present in
            every level, or None when every level has all of them.
        row_ce, col_ce, pointwise, smooth_kl: which sums to compute.
        pointwise_target, kl_direction: as in :class:`LossTerms`.
        compute_dtype: float32 or float64.
    """

    images: Tensor
    texts: Tensor
    scale: Tensor
    bias: Tensor | None
    levels: tuple[DirectionLevel, ...]
    kl_columns: tuple[Tensor, ...] | None
    row_ce: bool
    col_ce: bool
    pointwise: bool
    smooth_kl: bool
    pointwise_target: str
    kl_direction: str
    compute_dtype: torch.dtype

    @property
    def num_levels(self) -> int:
        """G."""
        return len(self.levels)

    @property
    def num_rows(self) -> int:
        """R."""
        return self.images.shape[0]

    @property
    def num_columns(self) -> int:
        """sum_g n_g."""
        return self.texts.shape[0]


@dataclass(frozen=True)
class DirectionPlan:
    """A problem's directions: ``main`` (image-to-text), and per level a text-to-image ``columns`` one (local loss)."""

    main: Direction
    columns: tuple[Direction | None, ...]


def plan_directions(problem: LossInputs, request: LossTerms) -> DirectionPlan:
    """Split ``problem`` into directions (see the module docstring)."""
    device = problem.image_features.device
    present = [None if m is None else torch.nonzero(m).flatten() for m in problem.text_masks]
    level_texts = problem.text_features.split(problem.level_sizes)
    kept = [t if index is None else t.index_select(0, index) for t, index in zip(level_texts, present, strict=True)]
    sizes = [t.shape[0] for t in kept]
    offsets = [sum(sizes[:g]) for g in range(len(sizes))]
    local = problem.is_local
    rows = problem.row_range.stop - problem.row_range.start
    main = Direction(
        images=problem.image_features[problem.row_range],
        texts=torch.cat(kept),
        scale=problem.logit_scale,
        bias=problem.logit_bias,
        levels=tuple(
            _level(offset, size, TargetView(targets, problem.row_range, index), rows, device)
            for offset, size, targets, index in zip(offsets, sizes, problem.targets, present, strict=True)
        ),
        kl_columns=_kl_columns(problem.text_masks, device) if request.smooth_kl else None,
        row_ce=request.soft_clip,
        col_ce=request.soft_clip and not local,
        pointwise=request.pointwise,
        smooth_kl=request.smooth_kl,
        pointwise_target=request.pointwise_target,
        kl_direction=request.kl_direction,
        compute_dtype=problem.compute_dtype,
    )
    columns: list[Direction | None] = [None] * problem.num_levels
    if request.soft_clip and local:
        columns = [_text_to_image_direction(problem, g, level_texts[g], device) for g in range(problem.num_levels)]
    return DirectionPlan(main, tuple(columns))


def run_directions(plan: DirectionPlan, request: LossTerms, run: Callable[[Direction], DirectionSums]) -> LevelSums:
    """Compute every direction of ``plan`` with ``run`` and assemble the problem's sums."""
    main = run(plan.main)
    col_ce, col_count = main.col_ce, main.col_count
    if any(direction is not None for direction in plan.columns):
        per_level = [run(direction) for direction in plan.columns if direction is not None]
        col_ce = torch.cat([sums.row_ce for sums in per_level])
        col_count = torch.cat([sums.row_count for sums in per_level])
    return LevelSums(
        soft_clip_rows=main.row_ce if request.soft_clip else None,
        soft_clip_row_count=main.row_count if request.soft_clip else None,
        soft_clip_cols=col_ce if request.soft_clip else None,
        soft_clip_col_count=col_count if request.soft_clip else None,
        pointwise=main.pointwise if request.pointwise else None,
        smooth_kl=main.smooth_kl if request.smooth_kl else None,
    )


def _text_to_image_direction(problem: LossInputs, level: int, texts: Tensor, device: torch.device) -> Direction:
    """This rank's present texts of ``level`` against every image: the soft CLIP column term."""
    columns = problem.column_ranges[level]
    local = torch.arange(columns.start, columns.stop, device=device)
    mask = problem.text_masks[level]
    if mask is not None:
        local = local[mask[columns]]
    return Direction(
        images=texts.index_select(0, local),
        texts=problem.image_features,
        scale=problem.logit_scale,
        bias=problem.logit_bias,
        levels=(
            _level(
                0,
                problem.image_features.shape[0],
                TargetView(problem.targets[level], local, None, True),
                local.shape[0],
                device,
            ),
        ),
        kl_columns=None,
        row_ce=True,
        col_ce=False,
        pointwise=False,
        smooth_kl=False,
        pointwise_target="mask",
        kl_direction="to_mean",
        compute_dtype=problem.compute_dtype,
    )


def _level(offset: int, size: int, targets: TargetView, num_rows: int, device: torch.device) -> DirectionLevel:
    return DirectionLevel(offset, size, targets, targets.keys(num_rows, size, device))


def _kl_columns(text_masks: tuple[Tensor | None, ...], device: torch.device) -> tuple[Tensor, ...] | None:
    """Per level, where the texts present in every level sit among that level's present texts."""
    if all(m is None for m in text_masks):
        return None
    size = next(m.shape[0] for m in text_masks if m is not None)
    full = torch.ones(size, dtype=torch.bool, device=device)
    masks = [full if m is None else m for m in text_masks]
    common = torch.stack(masks).all(0)
    return tuple((torch.cumsum(m.long(), 0) - 1)[common] for m in masks)
