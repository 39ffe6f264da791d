"""The dense and chunked backends: one autograd function that walks a direction in chunks of rows.

Per chunk, the logits of every level come from one matmul ``s * V_chunk @ T^T + b`` (absent
texts masked); the chunk is then processed in blocks of rows (:mod:`.blocks`: cache-sized on
CPUs, the whole chunk on accelerators, as :func:`.policy.device_policy` decides), which share
the softmax statistics between all terms. The backward is written by hand: it turns each block of
logits into its gradient in place and needs two matmuls per chunk.

- dense: one chunk holding every row; its logits are kept for the backward, which overwrites
  them with their gradient (a second backward through a retained graph recomputes them).
  Memory O(R * N).
- chunked: chunks of ``chunk_size`` rows whose logits are recomputed in the backward; only
  per-row and per-column statistics are kept. Memory O(chunk_size * N + (R + N) * D).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .base import DirectionSums, LevelSums, LossInputs, LossTerms, refuse_second_derivatives
from .blocks import DirectionState, backward_block, forward_block
from .directions import Direction, plan_directions, run_directions
from .label_keys import positive_gradients
from .policy import CHUNK_BUDGET_BYTES, DevicePolicy, chunk_rows, device_policy

__all__ = ["dense_level_sums", "chunked_level_sums", "chunk_rows", "CHUNK_BUDGET_BYTES"]


def dense_level_sums(problem: LossInputs, request: LossTerms, chunk_size: int | None = None) -> LevelSums:
    """All logits of a direction from one matmul, kept for the backward (``chunk_size`` is ignored)."""
    return _level_sums(problem, request, False, None)


def chunked_level_sums(problem: LossInputs, request: LossTerms, chunk_size: int | None = None) -> LevelSums:
    """Chunks of ``chunk_size`` rows (default: :func:`chunk_rows`), recomputed in the backward."""
    return _level_sums(problem, request, True, chunk_size)


def _level_sums(problem: LossInputs, request: LossTerms, chunked: bool, chunk_size: int | None) -> LevelSums:
    """Run the directions of ``problem``, in chunks (``chunked``) or as one kept chunk (dense)."""

    def run(direction: Direction) -> DirectionSums:
        policy = device_policy(
            direction.images.device,
            num_rows=direction.num_rows,
            num_columns=direction.num_columns,
            dtype=direction.compute_dtype,
            chunked=chunked,
            chunk_size=chunk_size,
        )
        outputs = _ChunkedFunction.apply(
            direction.images, direction.texts, direction.scale, direction.bias, direction, policy, chunked
        )
        return DirectionSums(*outputs)

    return run_directions(plan_directions(problem, request), request, run)


def _spans(stop: int, step: int) -> Iterator[slice]:
    for start in range(0, stop, step):
        yield slice(start, min(start + step, stop))


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
        policy: DevicePolicy,
        chunked: bool,
    ) -> tuple[Tensor, ...]:
        dtype = direction.compute_dtype
        scaled = images.to(dtype) * scale.to(dtype)
        columns = texts.to(dtype)
        bias_c = None if bias is None else bias.to(dtype)
        absent = None if direction.column_valid is None else ~direction.column_valid
        state = DirectionState(direction, images.device, policy.value_dependent)
        state.add_label_key_masses(direction)
        kept = None
        for rows in _spans(direction.num_rows, policy.chunk_rows):
            logits = _logits(scaled[rows], columns, bias_c, absent)
            for sub in _spans(logits.shape[0], policy.block_rows):
                forward_block(logits[sub], _shift(sub, rows.start), direction, state)
            if not chunked:
                kept = logits
        sums = state.finish(direction)
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.direction, ctx.state, ctx.policy, ctx.chunked, ctx.kept = direction, state, policy, chunked, kept
        ctx.absent = absent
        ctx.mark_non_differentiable(sums.row_count, sums.col_count)
        return sums.as_tuple()

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        refuse_second_derivatives("chunked" if ctx.chunked else "dense")
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
        policy = ctx.policy
        for rows in _spans(direction.num_rows, policy.chunk_rows):
            logits = ctx.kept if ctx.kept is not None else _logits(scaled[rows], columns, bias_c, ctx.absent)
            for sub in _spans(logits.shape[0], policy.block_rows):
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
                grads_g = positive_gradients(
                    level.keys, unscaled, columns[level.columns], scale_c, row_coef, col_coef, policy.value_dependent
                )
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
            None,
        )


def _shift(span: slice, start: int) -> slice:
    return slice(span.start + start, span.stop + start)


def _logits(scaled_images: Tensor, texts: Tensor, bias: Tensor | None, absent: Tensor | None) -> Tensor:
    """s * V @ T^T (+ b), [rows, columns], the ``absent`` columns set to the most negative finite number.

    The scale is already in ``scaled_images``. A masked logit has no probability, softplus or
    sigmoid, so its gradient is 0 and the mask needs no backward.
    """
    logits = scaled_images @ texts.t() if bias is None else torch.addmm(bias, scaled_images, texts.t())
    return logits if absent is None else logits.masked_fill_(absent, torch.finfo(logits.dtype).min)
