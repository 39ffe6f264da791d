"""The dense and chunked backends: one autograd function that walks a direction in chunks of rows.

Per chunk, the logits of every level come from one matmul ``s * V_chunk @ T^T + b``; the
chunk is then processed in cache-sized blocks of rows (:mod:`.blocks`), which share the
softmax statistics between all terms. The backward is written by hand: it turns each block of
logits into its gradient in place and needs two matmuls per chunk.

- dense: one chunk holding every row; its logits are kept for the backward, which overwrites
  them with their gradient (a second backward through a retained graph recomputes them).
  Memory O(R * N).
- chunked: chunks of ``chunk_size`` rows whose logits are recomputed in the backward; only
  per-row and per-column statistics are kept. Memory O(chunk_size * N + (R + N) * D).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .base import DirectionSums, LevelSums, LossInputs, LossTerms, refuse_second_derivatives
from .blocks import DirectionState, backward_block, forward_block
from .directions import Direction, plan_directions, run_directions
from .label_keys import positive_gradients

__all__ = ["dense_level_sums", "chunked_level_sums", "chunk_rows", "CHUNK_BUDGET_BYTES"]

CHUNK_BUDGET_BYTES = 256 * 2**20
"""Default memory for one chunk of logits in the chunked backend (256 MiB)."""

_BLOCK_BYTES = 2 * 2**20  # a block of rows whose logits stay in cache through its passes


def chunk_rows(num_columns: int, dtype: torch.dtype, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk so that a chunk of logits ([rows, num_columns] of ``dtype``) fits ``budget_bytes``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, budget_bytes // max(1, num_columns * itemsize))


def dense_level_sums(problem: LossInputs, request: LossTerms, chunk_size: int | None = None) -> LevelSums:
    """All logits of a direction from one matmul, kept for the backward (``chunk_size`` is ignored)."""
    return _level_sums(problem, request, lambda direction: None)


def chunked_level_sums(problem: LossInputs, request: LossTerms, chunk_size: int | None = None) -> LevelSums:
    """Chunks of ``chunk_size`` rows (default: :func:`chunk_rows`), recomputed in the backward."""
    return _level_sums(
        problem, request, lambda direction: chunk_size or chunk_rows(direction.num_columns, direction.compute_dtype)
    )


def _level_sums(
    problem: LossInputs, request: LossTerms, chunk_rows_for: Callable[[Direction], int | None]
) -> LevelSums:
    """Run the directions of ``problem``; ``chunk_rows_for(direction)`` is the chunk size (None: dense)."""

    def run(direction: Direction) -> DirectionSums:
        outputs = _ChunkedFunction.apply(
            direction.images, direction.texts, direction.scale, direction.bias, direction, chunk_rows_for(direction)
        )
        return DirectionSums(*outputs)

    return run_directions(plan_directions(problem, request), request, run)


def _spans(stop: int, step: int) -> Iterator[slice]:
    for start in range(0, stop, step):
        yield slice(start, min(start + step, stop))


def _block_rows(num_columns: int, dtype: torch.dtype) -> int:
    return chunk_rows(num_columns, dtype, _BLOCK_BYTES)


class _ChunkedFunction(torch.autograd.Function):
    """Sums of a direction from (images, texts, scale, bias); hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        images: Tensor,
        texts: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        direction: Direction,
        chunk_size: int | None,
    ) -> tuple[Tensor, ...]:
        dtype = direction.compute_dtype
        scaled = images.to(dtype) * scale.to(dtype)
        columns = texts.to(dtype)
        bias_c = None if bias is None else bias.to(dtype)
        state = DirectionState(direction, images.device)
        state.add_label_key_masses(direction)
        chunk = direction.num_rows if chunk_size is None else chunk_size
        block = _block_rows(direction.num_columns, dtype)
        kept = None
        for rows in _spans(direction.num_rows, chunk):
            logits = _logits(scaled[rows], columns, bias_c)
            for sub in _spans(logits.shape[0], block):
                forward_block(logits[sub], _shift(sub, rows.start), direction, state)
            if chunk_size is None:
                kept = logits
        sums = state.finish(direction)
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.direction, ctx.state, ctx.chunk_size, ctx.kept = direction, state, chunk_size, kept
        ctx.mark_non_differentiable(sums.row_count, sums.col_count)
        return sums.as_tuple()

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        refuse_second_derivatives("dense" if ctx.chunk_size is None else "chunked")
        images, texts, scale, bias = ctx.saved_tensors
        direction, state = ctx.direction, ctx.state
        dtype = direction.compute_dtype
        upstream = DirectionSums.upstream(grads, direction.num_levels, dtype, images.device)
        scale_c = scale.to(dtype)
        unscaled = images.to(dtype)
        scaled = unscaled * scale_c
        columns = texts.to(dtype)
        bias_c = None if bias is None else bias.to(dtype)
        grad_images = torch.empty_like(scaled)
        grad_texts = torch.zeros_like(columns)
        grad_scale = torch.zeros((), dtype=dtype, device=images.device)
        grad_bias = torch.zeros((), dtype=dtype, device=images.device)
        chunk = direction.num_rows if ctx.chunk_size is None else ctx.chunk_size
        block = _block_rows(direction.num_columns, dtype)
        for rows in _spans(direction.num_rows, chunk):
            logits = ctx.kept if ctx.kept is not None else _logits(scaled[rows], columns, bias_c)
            for sub in _spans(logits.shape[0], block):
                grad_logits = backward_block(logits[sub], _shift(sub, rows.start), direction, state, upstream)
                grad_bias += grad_logits.sum()
                logits[sub] = grad_logits  # the logits buffer now holds dL/dz
            projected = logits @ columns  # dL/dz @ T, [rows, D]
            grad_images[rows] = projected * scale_c
            grad_scale += (projected * unscaled[rows]).sum()
            grad_texts.addmm_(logits.t(), scaled[rows])
        everything = slice(0, direction.num_rows)
        for g, level in enumerate(direction.levels):
            if level.keys is not None and level.size > 0:
                row_coef, col_coef = state.positive_coefficients(direction, g, everything, upstream)
                grads_g = positive_gradients(level.keys, unscaled, columns[level.columns], scale_c, row_coef, col_coef)
                grad_images += grads_g[0]
                grad_texts[level.columns] += grads_g[1]
                grad_scale += grads_g[2]
                grad_bias += grads_g[3]
        ctx.kept = None  # overwritten by the gradient: a second backward (retain_graph) recomputes the logits
        return (
            grad_images.to(images.dtype) if ctx.needs_input_grad[0] else None,
            grad_texts.to(texts.dtype) if ctx.needs_input_grad[1] else None,
            grad_scale.to(scale.dtype) if ctx.needs_input_grad[2] else None,
            grad_bias.to(bias.dtype) if bias is not None and ctx.needs_input_grad[3] else None,
            None,
            None,
        )


def _shift(span: slice, start: int) -> slice:
    return slice(span.start + start, span.stop + start)


def _logits(scaled_images: Tensor, texts: Tensor, bias: Tensor | None) -> Tensor:
    """s * V @ T^T (+ b), [rows, columns]; the scale is already in ``scaled_images``."""
    if bias is None:
        return scaled_images @ texts.t()
    return torch.addmm(bias, scaled_images, texts.t())
