"""Lay a :class:`LossInputs` out as directions: the sub-problems the dense, chunked and triton backends walk.

A direction is image-to-text (rows: images, against the texts of every level concatenated into
one column space) or text-to-image (rows: one level's texts, against the images; transposed).
Absent texts (``text_mask``) stay in place and are masked, never dropped, so that every shape
depends only on the input shapes: their logits are set to the most negative finite number (no
probability, no softplus, no gradient) and they are nobody's positive. Two layouts:

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

from ..positives import Index, LevelTargets, dense_keys
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
        row_valid, col_valid: bool masks of the direction's rows / columns that are present texts
            (absent ones are nobody's positive); None: all present.
    """

    def __init__(
        self,
        source: LevelTargets,
        row_map: Index | None,
        col_map: Index | None,
        transposed: bool = False,
        row_valid: Tensor | None = None,
        col_valid: Tensor | None = None,
    ) -> None:
        self.source = source
        self.row_map = row_map
        self.col_map = col_map
        self.transposed = transposed
        self.row_valid = row_valid
        self.col_valid = col_valid

    def tile(self, rows: Index, cols: Index, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The direction's positives for ``rows`` x ``cols``, [len(rows), len(cols)]."""
        mapped_rows, mapped_cols = compose(self.row_map, rows), compose(self.col_map, cols)
        if self.transposed:
            tile = self.source.tile(mapped_cols, mapped_rows, dtype, device).t()
        else:
            tile = self.source.tile(mapped_rows, mapped_cols, dtype, device)
        if self.row_valid is not None:
            tile = tile * self.row_valid[rows, None]
        if self.col_valid is not None:
            tile = tile * self.col_valid[cols]
        return tile

    def keys(self, num_rows: int, num_cols: int, device: torch.device) -> LabelKeys | None:
        """Label keys of the whole level (see :meth:`LevelTargets.keys`), renumbered; None if P has none.

        Keys are renumbered into ``range(num_rows + num_cols)`` by :func:`~mgll_loss.positives.dense_keys`;
        absent texts get keys of their own above that range, so the bound (the keys' ``count``) is
        ``num_rows + num_cols``, or twice that with absent texts: known from the shapes.
        """
        rows, cols = compose(self.row_map, slice(0, num_rows)), compose(self.col_map, slice(0, num_cols))
        keys = self.source.keys(cols, rows, device) if self.transposed else self.source.keys(rows, cols, device)
        if keys is None:
            return None
        row_keys, col_keys = keys[::-1] if self.transposed else keys
        dense = dense_keys(torch.cat([row_keys, col_keys]))
        total = num_rows + num_cols
        if self.row_valid is None and self.col_valid is None:
            return LabelKeys.build(dense[:num_rows], dense[num_rows:], total)
        valid = torch.cat([_present(self.row_valid, num_rows, device), _present(self.col_valid, num_cols, device)])
        dense = torch.where(valid, dense, total + torch.arange(total, device=device))
        return LabelKeys.build(dense[:num_rows], dense[num_rows:], 2 * total)


def _present(valid: Tensor | None, size: int, device: torch.device) -> Tensor:
    return torch.ones(size, dtype=torch.bool, device=device) if valid is None else valid


@dataclass(frozen=True)
class DirectionLevel:
    """One level's texts in a direction: columns ``offset : offset + size`` of the direction's logits.

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
    """Rows against the concatenated texts of every level, and the terms to compute.

    Attributes:
        images: the rows, [R, D] (texts in a transposed direction).
        texts: the columns of every level, concatenated, [sum_g n_g, D] (images in a transposed direction).
        scale, bias: s (0-dim) and b (0-dim or None); logits are ``s * images @ texts.T + b``.
        levels: the column block of each level.
        column_valid: bool [sum_g n_g], the columns that are present texts; None when all are.
        kl_common: bool [N], the texts present in every level (the smooth KL's columns; every
            level has N columns then), or None when every level has all of them.
        row_ce, col_ce, pointwise, smooth_kl: which sums to compute.
        pointwise_target, kl_direction: as in :class:`LossTerms`.
        compute_dtype: float32 or float64.
    """

    images: Tensor
    texts: Tensor
    scale: Tensor
    bias: Tensor | None
    levels: tuple[DirectionLevel, ...]
    column_valid: Tensor | None
    kl_common: Tensor | None
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
    sizes = problem.level_sizes
    offsets = [sum(sizes[:g]) for g in range(len(sizes))]
    masks = problem.text_masks
    local = problem.is_local
    rows = problem.row_range.stop - problem.row_range.start
    main = Direction(
        images=problem.image_features[problem.row_range],
        texts=problem.text_features,
        scale=problem.logit_scale,
        bias=problem.logit_bias,
        levels=tuple(
            _level(offset, size, TargetView(targets, problem.row_range, None, col_valid=mask), rows, device)
            for offset, size, targets, mask in zip(offsets, sizes, problem.targets, masks, strict=True)
        ),
        column_valid=None
        if all(m is None for m in masks)
        else torch.cat([_present(m, n, device) for m, n in zip(masks, sizes, strict=True)]),
        kl_common=_kl_common(masks) if request.smooth_kl else None,
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
        level_texts = problem.text_features.split(sizes)
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
    """This rank's texts of ``level`` against every image: the soft CLIP column term (absent texts: no positive)."""
    columns = problem.column_ranges[level]
    mask = problem.text_masks[level]
    valid = None if mask is None else mask[columns]
    return Direction(
        images=texts[columns],
        texts=problem.image_features,
        scale=problem.logit_scale,
        bias=problem.logit_bias,
        levels=(
            _level(
                0,
                problem.image_features.shape[0],
                TargetView(problem.targets[level], columns, None, True, row_valid=valid),
                columns.stop - columns.start,
                device,
            ),
        ),
        column_valid=None,
        kl_common=None,
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


def _kl_common(text_masks: tuple[Tensor | None, ...]) -> Tensor | None:
    """bool [N]: the texts present in every level; None when no level has a mask."""
    present = [m for m in text_masks if m is not None]
    if not present:
        return None
    return torch.stack(present).all(0)
