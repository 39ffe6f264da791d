"""The triton backend: the directions of :mod:`.directions` computed by the kernels of :mod:`.triton_kernels`.

Per level, the forward runs a max pass and a sums pass over (row block, column block) tiles,
then the smooth KL kernel over the columns every level has; the backward recomputes each tile
and adds its gradient to the features with atomics. Nothing of size B x N is stored.

Absent texts are masked through the features (every shape static): the features get one more
dimension, 1 for the images and ``-1e30 / s`` for an absent text (0 for a present one), so an
absent text's logits are about ``-1e30`` (no probability, softplus or sigmoid, no gradient); its
labels are replaced by a label no image has, so it is nobody's positive. Runs on
CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests run it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import DirectionSums, LevelSums, LossInputs, LossTerms, refuse_second_derivatives
from .blocks import cross_entropy_sums, pointwise_sum, positive_coefficients
from .directions import Direction, DirectionLevel, compose, plan_directions, run_directions

__all__ = ["triton_level_sums", "interpreting", "check_triton_device", "check_triton_installed"]

_MATCH_CODES = {"overlap": 1, "jaccard": 2}


def interpreting() -> bool:
    """True when Triton runs its kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


TRITON_FLOOR = (3, 5)
"""The oldest triton the kernels run on (the ``triton`` extra's floor; torch 2.9 comes with triton 3.5)."""


def check_triton_installed() -> None:
    """Raise ``ValueError`` unless triton >= :data:`TRITON_FLOOR` (older ones reject the kernels) can be imported."""
    try:
        import triton
    except ImportError:
        raise ValueError('backend: "triton" needs the triton package (pip install "mgll-loss[triton]")') from None
    found = str(getattr(triton, "__version__", "unknown"))
    release = re.match(r"(\d+)(?:\.(\d+))?", found)
    if release is None or (int(release[1]), int(release[2] or 0)) < TRITON_FLOOR:
        raise ValueError(
            f'backend: "triton" needs triton>=3.5 (which torch>=2.9 comes with), found triton {found}; '
            'upgrade torch and pip install "mgll-loss[triton]", or use backend="dense" or "chunked"'
        )


def check_triton_device(device: torch.device) -> None:
    """Raise ``ValueError`` unless the triton backend can run on ``device`` here."""
    check_triton_installed()
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return
    raise ValueError(
        f'backend: "triton" runs on CUDA tensors, got tensors on {device}; set TRITON_INTERPRET=1 to run its '
        'kernels (slowly) on CPU tensors for testing, or use backend="dense" or "chunked"'
    )


def triton_level_sums(problem: LossInputs, request: LossTerms, chunk_size: int | None = None) -> LevelSums:
    """The sums of ``problem`` from the Triton kernels (``chunk_size`` is ignored: tiles are fixed)."""
    check_triton_device(problem.image_features.device)

    def run(direction: Direction) -> DirectionSums:
        return DirectionSums(
            *_TritonFunction.apply(direction.images, direction.texts, direction.scale, direction.bias, direction)
        )

    return run_directions(plan_directions(problem, request), request, run)


@dataclass
class _Tiles:
    """Launch configuration shared by every kernel of a direction."""

    rows: int
    dim: int
    block_m: int
    block_n: int
    block_k: int
    acc: Any

    def grid(self, columns: int) -> tuple[int, int]:
        return (-(-self.rows // self.block_m), -(-columns // self.block_n))

    def constants(self) -> dict:
        return dict(BM=self.block_m, BN=self.block_n, BK=self.block_k, ACC=self.acc)


@dataclass
class _Positives:
    """Kernel arguments describing one level's positives (unused ones are 1-element placeholders)."""

    mode: int
    match: int
    tensors: tuple[Tensor, ...]  # keys rows, keys cols, labels rows, labels cols, counts rows, counts cols, dense
    classes: int

    def arguments(self) -> tuple[Tensor, ...]:
        return self.tensors


def _positives(level: DirectionLevel, num_rows: int, dtype: torch.dtype, device: torch.device) -> _Positives:
    placeholder_ids = torch.zeros(1, dtype=torch.int64, device=device)
    placeholder = torch.zeros(1, dtype=dtype, device=device)
    if level.keys is not None:
        keys = level.keys
        return _Positives(
            0, 0, (keys.rows, keys.cols, placeholder, placeholder, placeholder, placeholder, placeholder), 1
        )
    view = level.targets
    source = view.source
    if source.multi_hot is not None:
        rows = source.multi_hot[compose(view.row_map, slice(0, num_rows))].to(dtype)
        cols = source.multi_hot[compose(view.col_map, slice(0, level.size))].to(dtype)
        if view.row_valid is not None or view.col_valid is not None:
            rows, cols = _absent_label(rows, view.row_valid), _absent_label(cols, view.col_valid)
        rows, cols = rows.contiguous(), cols.contiguous()
        tensors = (placeholder_ids, placeholder_ids, rows, cols, rows.sum(1), cols.sum(1), placeholder)
        return _Positives(1, _MATCH_CODES[source.match], tensors, rows.shape[1])
    dense = view.tile(slice(0, num_rows), slice(0, level.size), dtype, device).contiguous()
    return _Positives(2, 0, (placeholder_ids,) * 2 + (placeholder,) * 4 + (dense,), 1)


def _absent_label(labels: Tensor, valid: Tensor | None) -> Tensor:
    """Multi-hot ``labels`` [m, C] with one more label, held alone by the absent texts (nobody's positive)."""
    if valid is None:
        return torch.cat([labels, labels.new_zeros(labels.shape[0], 1)], 1)
    return torch.cat([labels * valid[:, None], (~valid)[:, None].to(labels.dtype)], 1)


_MASKED_LOGIT = 1e30  # |logit| of an absent text: exp underflows to 0, and sums of G such logits stay finite


def _features(
    images: Tensor, texts: Tensor, scale: Tensor, dtype: torch.dtype, valid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Images and texts in ``dtype``; with ``valid`` (bool over the texts) one more dimension masks the absent."""
    images, texts = images.to(dtype), texts.to(dtype)
    if valid is None:
        return images.contiguous(), texts.contiguous()
    masked = torch.where(valid, 0.0, -_MASKED_LOGIT / scale.detach().to(dtype))
    return (
        torch.cat([images, images.new_ones(images.shape[0], 1)], 1).contiguous(),
        torch.cat([texts, masked[:, None].to(dtype)], 1).contiguous(),
    )


def _tiles(direction: Direction, dim: int, device: torch.device) -> _Tiles:
    import triton.language as tl

    acc = tl.float64 if direction.compute_dtype == torch.float64 else tl.float32
    size = 16 if device.type == "cpu" else 64
    return _Tiles(direction.num_rows, dim, size, size, 16 if device.type == "cpu" else 32, acc)


class _TritonFunction(torch.autograd.Function):
    """Sums of a direction from (images, texts, scale, bias) by the Triton kernels; backward by the kernels too."""

    @staticmethod
    def forward(
        ctx: Any, images: Tensor, texts: Tensor, scale: Tensor, bias: Tensor | None, direction: Direction
    ) -> tuple[Tensor, ...]:
        from . import triton_kernels as kernels

        dtype, device = direction.compute_dtype, images.device
        features = _features(images, texts, scale, dtype, direction.column_valid)
        scalars = (scale.to(dtype).reshape(1), (bias if bias is not None else scale).to(dtype).reshape(1))
        tiles = _tiles(direction, features[0].shape[1], device)
        levels, rows = direction.num_levels, direction.num_rows

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        sums = DirectionSums.zeros(levels, dtype, device)
        row_lse, row_mass = zeros(levels, rows), zeros(levels, rows)
        col_lse, col_mass = zeros(direction.num_columns), zeros(direction.num_columns)
        common = dict(HAS_BIAS=bias is not None, **tiles.constants())
        for g, level in enumerate(direction.levels):
            if level.size == 0:
                continue
            positives = _positives(level, rows, dtype, device)
            stats = _level_statistics(
                kernels,
                features,
                scalars,
                tiles,
                level.offset,
                level.size,
                None,
                direction.col_ce,
                positives,
                direction.pointwise,
                common,
            )
            lse_r, lse_c, mass, pz, mass_c, pz_c, softplus = stats
            row_lse[g], row_mass[g] = lse_r, mass
            if direction.row_ce:
                sums.row_ce[g], sums.row_count[g] = cross_entropy_sums(lse_r, pz, mass)
            if direction.col_ce:
                col_lse[level.columns], col_mass[level.columns] = lse_c, mass_c
                sums.col_ce[g], sums.col_count[g] = cross_entropy_sums(lse_c, pz_c, mass_c)
            if direction.pointwise:
                sums.pointwise[g] = pointwise_sum(softplus.sum(), pz, mass, direction.pointwise_target)
        kl = None
        if direction.smooth_kl:
            kl_features = _kl_features(images, texts, scale, direction, features)
            kl = _kl_forward(kernels, kl_features, scalars, tiles, direction, row_lse, common)
            sums.smooth_kl.copy_(kl[3])
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.direction, ctx.stats, ctx.kl = direction, (row_lse, row_mass, col_lse, col_mass), kl
        ctx.mark_non_differentiable(sums.row_count, sums.col_count)
        return sums.as_tuple()

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        refuse_second_derivatives("triton")
        from . import triton_kernels as kernels

        images, texts, scale, bias = ctx.saved_tensors
        direction = ctx.direction
        dtype, device = direction.compute_dtype, images.device
        levels = direction.num_levels
        upstream = DirectionSums.upstream(grads, levels, dtype, device)
        features = _features(images, texts, scale, dtype, direction.column_valid)
        scalars = (scale.to(dtype).reshape(1), (bias if bias is not None else scale).to(dtype).reshape(1))
        tiles = _tiles(direction, features[0].shape[1], device)
        grad_images, grad_texts = torch.zeros_like(features[0]), torch.zeros_like(features[1])
        grad_bias = torch.zeros(1, dtype=dtype, device=device)
        outputs = (grad_images, grad_texts, grad_bias)
        row_lse, row_mass, col_lse, col_mass = ctx.stats
        common = dict(HAS_BIAS=bias is not None, **tiles.constants())
        for g, level in enumerate(direction.levels):
            if level.size == 0:
                continue
            columns = level.columns
            mass = row_mass[g]
            row_coef, col_coef = positive_coefficients(
                direction, g, mass, col_mass[columns] if direction.col_ce else None, upstream
            )
            row_weight = upstream.row_ce[g] * (mass > 0)
            col_weight = upstream.col_ce[g] * (col_mass[columns] > 0)
            positives = _positives(level, direction.num_rows, dtype, device)
            kernels.logit_grad_kernel[tiles.grid(level.size)](
                *features,
                *scalars,
                *outputs,
                row_lse[g],
                row_weight,
                row_coef,
                col_lse[columns].contiguous(),
                col_weight.contiguous(),
                (col_coef if col_coef is not None else col_weight).contiguous(),
                upstream.pointwise[g].reshape(1),
                *positives.arguments(),
                direction.num_rows,
                level.size,
                tiles.dim,
                positives.classes,
                level.offset,
                WITH_ROWS=direction.row_ce,
                WITH_COLS=direction.col_ce,
                WITH_SIGMOID=direction.pointwise,
                WITH_POSITIVES=direction.row_ce or direction.col_ce or direction.pointwise,
                MODE=positives.mode,
                MATCH=positives.match,
                BC=16,
                **common,
            )
        if ctx.kl is not None:
            text_rows, kl_lse, kl_dot, _ = ctx.kl
            kl_grad = (
                upstream.smooth_kl if direction.kl_common is None else upstream.smooth_kl * direction.kl_common.any()
            )
            kernels.smooth_kl_grad_kernel[tiles.grid(text_rows.shape[1])](
                *_kl_features(images, texts, scale, direction, features),
                *scalars,
                *outputs,
                text_rows,
                kl_lse,
                kl_dot,
                kl_grad.reshape(1),
                direction.num_rows,
                text_rows.shape[1],
                tiles.dim,
                levels,
                TO_MEAN=direction.kl_direction == "to_mean",
                **common,
            )
        scale_c = scalars[0][0]
        grad_scale = (features[0] * grad_images).sum() / scale_c
        return (
            grad_images[:, : images.shape[1]].to(images.dtype) if ctx.needs_input_grad[0] else None,
            grad_texts[:, : texts.shape[1]].to(texts.dtype) if ctx.needs_input_grad[1] else None,
            grad_scale.to(scale.dtype) if ctx.needs_input_grad[2] else None,
            grad_bias[0].to(bias.dtype) if bias is not None and ctx.needs_input_grad[3] else None,
            None,
        )


def _level_statistics(
    kernels: Any,
    features: tuple[Tensor, Tensor],
    scalars: tuple[Tensor, Tensor],
    tiles: _Tiles,
    offset: int,
    size: int,
    column_index: Tensor | None,
    with_cols: bool,
    positives: _Positives | None,
    with_softplus: bool,
    common: dict,
) -> tuple[Tensor, ...]:
    """Row lse, column lse, row mass / positive sums, column mass / positive sums and row softplus sums of one level.

    ``column_index``: the texts of the columns (else ``offset + column``).
    """
    images = features[0]
    rows, dtype, device = tiles.rows, images.dtype, images.device
    row_max = torch.full((rows,), -torch.inf, dtype=dtype, device=device)
    col_max = torch.full((size,), -torch.inf, dtype=dtype, device=device)
    index = column_index if column_index is not None else torch.zeros(1, dtype=torch.int64, device=device)
    grid = tiles.grid(size)
    flags = dict(HAS_INDEX=column_index is not None, WITH_COLS=with_cols, **common)
    kernels.logit_max_kernel[grid](*features, *scalars, index, row_max, col_max, rows, size, tiles.dim, offset, **flags)
    row_vectors = [torch.zeros(rows, dtype=dtype, device=device) for _ in range(4)]  # sumexp, mass, pz, softplus
    col_vectors = [torch.zeros(size, dtype=dtype, device=device) for _ in range(3)]  # sumexp, mass, pz
    operands = positives if positives is not None else _Positives(0, 0, (index,) * 2 + (row_max,) * 5, 1)
    kernels.loss_sums_kernel[grid](
        *features,
        *scalars,
        index,
        row_max,
        col_max,
        row_vectors[0],
        col_vectors[0],
        row_vectors[1],
        row_vectors[2],
        col_vectors[1],
        col_vectors[2],
        row_vectors[3],
        *operands.arguments(),
        rows,
        size,
        tiles.dim,
        operands.classes,
        offset,
        WITH_POSITIVES=positives is not None,
        WITH_SOFTPLUS=with_softplus,
        MODE=operands.mode,
        MATCH=operands.match,
        BC=16,
        **flags,
    )
    row_lse = row_max + row_vectors[0].log()
    col_lse = col_max + col_vectors[0].log()
    return row_lse, col_lse, row_vectors[1], row_vectors[2], col_vectors[1], col_vectors[2], row_vectors[3]


def _kl_features(
    images: Tensor, texts: Tensor, scale: Tensor, direction: Direction, features: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """The features of the smooth KL: the texts missing from some level masked (``features`` when none is)."""
    if direction.kl_common is None:
        return features
    valid = direction.kl_common.repeat(direction.num_levels)
    return _features(images, texts, scale, direction.compute_dtype, valid)


def _kl_forward(
    kernels: Any,
    features: tuple[Tensor, Tensor],
    scalars: tuple[Tensor, Tensor],
    tiles: _Tiles,
    direction: Direction,
    row_lse: Tensor,
    common: dict,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(text rows [G, N], lse [G, R], per-row dots [G, R], total): the smooth KL over the columns every level has.

    ``features`` are those of :func:`_kl_features`; without a common column the total is 0.
    """
    device = features[0].device
    text_rows = torch.stack([torch.arange(lv.offset, lv.offset + lv.size, device=device) for lv in direction.levels])
    kl_lse = row_lse
    if direction.kl_common is not None:
        kl_lse = torch.stack(
            [
                _level_statistics(
                    kernels, features, scalars, tiles, 0, text_rows.shape[1], text_rows[g], False, None, False, common
                )[0]
                for g in range(direction.num_levels)
            ]
        )
    kl_dot = torch.zeros_like(kl_lse)
    kl_total = torch.zeros(direction.num_rows, dtype=kl_lse.dtype, device=device)
    kernels.smooth_kl_kernel[tiles.grid(text_rows.shape[1])](
        *features,
        *scalars,
        text_rows,
        kl_lse.contiguous(),
        kl_dot,
        kl_total,
        direction.num_rows,
        text_rows.shape[1],
        tiles.dim,
        direction.num_levels,
        TO_MEAN=direction.kl_direction == "to_mean",
        **common,
    )
    total = kl_dot.sum() if direction.kl_direction == "to_mean" else kl_total.sum()
    if direction.kl_common is not None:
        total = total * direction.kl_common.any()
    return text_rows, kl_lse.contiguous(), kl_dot, total
