"""The batched backend: every level in one tensor of logits [B, G, N], static shapes, one autograd node.

The logits of all G levels come from one matmul, ``s * V @ [T^1; ...; T^G]^T + b``, viewed as
[B, G, N]; the positives of every level are stacked the same way (class ids and plain CLIP levels
from one comparison of label keys). One row log-softmax over the texts serves the soft CLIP rows
and the smooth KL, one column log-softmax over the images the soft CLIP columns:

- soft CLIP row i of level g (``mass_i = sum_j P_ij``): ``-sum_j (P_ij / mass_i) log p_ij``, 0 for
  a row without a positive (and left out of the count); columns likewise;
- point-wise: ``sum_ij softplus(z_ij) - sum_ij y_ij z_ij``, y = P or P / mass (row-normalised);
- smooth KL: ``log p^g = log_softmax(z^g)``, ``m = mean_g p^g`` and ``log m`` from m clamped at the
  smallest float (m = 0 only where every p^g is 0, whose terms are then 0).

The backward is written out (:class:`_BatchedSums`): one ``dL/dz`` for every level from the
softmaxes the forward already has, then two matmuls. Per row and level, with upstream gradients
``a`` (soft CLIP rows), ``c`` (columns), ``w`` (point-wise) and ``k`` (smooth KL):

- soft CLIP rows: ``a * (softmax(z_i.) - P_i. / mass_i)`` on rows with a positive; columns alike;
- point-wise: ``w * (sigmoid(z) - y)``;
- smooth KL towards the mean: ``k * p * (u - sum_j p_j u_j)`` with ``u = log p - log m``; from the
  mean: ``k * (p * (d - sum_j p_j d_j + 1) - m)`` with ``d = log m - mean_g log p^g``.

That is about half the operators of autograd's backward of the same forward, which is what a
step costs at training batch sizes (32 to a few hundred images), on a CPU and in GPU launches.

Absent texts (``text_mask``) and the padding of levels with fewer texts are masked, never
removed, so every shape depends only on the input shapes: no host reads, no data-dependent
shapes, one graph under ``torch.compile(fullgraph=True)``. Masked logits are replaced by the
most negative finite number of the compute dtype (not ``-inf``), so a row with every text
absent stays finite and drops out of the means. Memory O(B * G * N): for small and medium
problems, where the per-block bookkeeping of the fused backends costs more than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..positives import LevelTargets
from .base import LevelSums, LossInputs, LossTerms
from .softplus import softplus_sum
from .weighting import SumWeights, TermWeights, sum_gradients, sum_weights, texts_present, weighted_terms

__all__ = ["batched_level_sums", "batched_weighted_terms"]


def batched_level_sums(problem: LossInputs, request: LossTerms, chunk_size: int | None = None) -> LevelSums:
    """The sums of ``problem`` from one [B, G, N] tensor of logits (``chunk_size`` is ignored)."""
    outputs = _BatchedSums.apply(*_arguments(problem, request, None))
    return LevelSums(**dict(zip(_output_names(request), outputs, strict=True)))


def batched_weighted_terms(
    problem: LossInputs, request: LossTerms, weights: TermWeights
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The weighted soft CLIP, point-wise and smooth KL terms of ``problem`` (None where off), one autograd node.

    The division by the counts and the weighting (:mod:`.weighting`) happen inside the node, with
    the counts of this process: not for a local loss across ranks, whose counts span the ranks.
    """
    outputs = iter(_BatchedSums.apply(*_arguments(problem, request, weights)))
    return tuple(next(outputs) if on else None for on in _terms_on(request))  # type: ignore[return-value]


def _arguments(problem: LossInputs, request: LossTerms, weights: TermWeights | None) -> tuple[Any, ...]:
    """The arguments of :class:`_BatchedSums` for ``problem`` (sums when ``weights`` is None, else terms)."""
    width = max(problem.level_sizes)
    dtype = problem.compute_dtype
    valid = _valid_columns(problem, width)
    positives = _positives(problem, width, valid) if request.soft_clip or request.pointwise else None
    columns = _column_range_mask(problem, width) if request.soft_clip and problem.is_local else None
    bias = None if problem.logit_bias is None else _as(problem.logit_bias, dtype)
    present = 0 if weights is None else texts_present(problem, request)
    layout = _Layout(
        positives,
        valid,
        columns,
        (problem.row_range.start, problem.row_range.stop),
        request,
        problem.num_levels,
        weights,
        present,
    )
    return (
        _as(problem.image_features, dtype),
        _padded_texts(problem, width),
        _as(problem.logit_scale, dtype),
        bias,
        *layout,
    )


class _Layout(NamedTuple):
    """What :class:`_BatchedSums` needs of a problem besides its differentiable inputs (passed to it unpacked)."""

    positives: Tensor | None  # P of every level, [B, G, N]; None without soft CLIP and point-wise terms
    valid: Tensor | None  # bool [G, N]: present texts, not padding; None when all are
    columns: Tensor | None  # bool [G, N]: a local loss's own columns; None for all
    rows: tuple[int, int]  # this process's rows (start, stop)
    request: LossTerms
    levels: int  # G
    weights: TermWeights | None  # None: return the sums; else the weighted terms
    texts_present: int | Tensor  # of :func:`.weighting.sum_weights` (with weights)


def _terms_on(request: LossTerms) -> tuple[bool, bool, bool]:
    return request.soft_clip, request.pointwise, request.smooth_kl


def _output_names(request: LossTerms) -> list[str]:
    """The :class:`LevelSums` fields :class:`_BatchedSums` returns for ``request``, in order."""
    names = []
    if request.soft_clip:
        names += ["soft_clip_rows", "soft_clip_row_count", "soft_clip_cols", "soft_clip_col_count"]
    if request.pointwise:
        names.append("pointwise")
    if request.smooth_kl:
        names.append("smooth_kl")
    return names


class _BatchedSums(torch.autograd.Function):
    """The per-level sums of a [B, G, N] problem, with the backward written out (see the module docstring).

    Under ``create_graph=True`` (second derivatives: gradient penalties, Hessian-vector products)
    the backward instead differentiates the same forward, recomputed with autograd, so that its
    result is differentiable too.
    """

    @staticmethod
    def forward(ctx: Any, images: Tensor, texts: Tensor, scale: Tensor, bias: Tensor | None, *fields: Any) -> Any:
        layout = _Layout(*fields)
        outputs, state, weights = _outputs(images, texts, scale, bias, layout)
        if state.soft_clip is not None and weights is None:
            ctx.mark_non_differentiable(outputs[1], outputs[3])  # the counts
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(images, texts, scale, bias)
        ctx.layout, ctx.state, ctx.weights = layout, state, weights
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        images, texts, scale, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiate the forward again, with autograd
            return _differentiable_backward(ctx.layout, (images, texts, scale, bias), needs, grads)
        if ctx.weights is not None:  # upstream gradients of the terms: those of the sums
            grads = _sum_upstream(ctx.weights, ctx.layout.request, grads, ctx.layout.levels)
        d_all = _logit_gradient(ctx.state, ctx.layout, grads)
        if d_all is None:
            return (None,) * len(needs)
        d_logits = d_all.view(images.shape[0], -1)
        to_images = d_logits @ texts if needs[0] or needs[2] else None
        return (
            to_images * scale if needs[0] else None,
            (d_logits.t() @ images) * scale if needs[1] else None,
            (to_images * images).sum() if needs[2] else None,
            d_logits.sum() if needs[3] else None,
        ) + (None,) * (len(needs) - 4)


@dataclass
class _State:
    """What the hand-written backward reads from the forward ([R, G, N] unless stated)."""

    z: Tensor  # the logits, [B, G, N]
    z_rows: Tensor  # this process's rows, absent texts masked
    log_probs: Tensor  # row log-softmax
    pointwise_y: Tensor | None  # the point-wise target
    soft_clip: tuple[Tensor, ...] | None  # has_row, row_inverse, has_col, col_inverse, col_log_probs, P, P of the rows
    kl: _SmoothKL | None
    every_row: bool


def _outputs(
    images: Tensor, texts: Tensor, scale: Tensor, bias: Tensor | None, layout: _Layout
) -> tuple[list[Tensor], _State, SumWeights | None]:
    """The sums (weights None), or the requested terms with the weights of their sums; the state of the backward."""
    sums, state = _forward(images, texts, scale, bias, layout)
    weights, request = layout.weights, layout.request
    if weights is None:
        return sums, state, None
    by_name = LevelSums(**dict(zip(_output_names(request), sums, strict=True)))
    counts = None
    if by_name.soft_clip_row_count is not None and by_name.soft_clip_col_count is not None:
        counts = (by_name.soft_clip_row_count, by_name.soft_clip_col_count)
    scales = sum_weights(
        request, weights, counts=counts, texts_present=layout.texts_present, num_images=images.shape[0]
    )
    terms = [term for term in weighted_terms(by_name, scales) if term is not None]
    return terms, state, scales


def _sum_upstream(
    weights: SumWeights, request: LossTerms, grads: tuple[Tensor | None, ...], levels: int
) -> tuple[Tensor | None, ...]:
    """The upstream gradients of the sums (:func:`_output_names` order) from those of the requested terms."""
    upstream = iter(grads)
    per_term = tuple(next(upstream) if on else None for on in _terms_on(request))
    rows, cols, pointwise, smooth_kl = sum_gradients(weights, per_term, levels)  # type: ignore[arg-type]
    by_name = {
        "soft_clip_rows": rows,
        "soft_clip_cols": cols,
        "pointwise": pointwise,
        "smooth_kl": smooth_kl,
    }
    return tuple(by_name.get(name) for name in _output_names(request))


def _forward(
    images: Tensor, texts: Tensor, scale: Tensor, bias: Tensor | None, layout: _Layout
) -> tuple[list[Tensor], _State]:
    """The requested sums (:func:`_output_names` order) and the state of the backward."""
    positives, valid, columns, rows, request, levels = layout[:6]
    products = images @ texts.t()
    logits = products * scale if bias is None else torch.addcmul(bias, products, scale)
    z = logits.view(images.shape[0], levels, -1)
    every_row = rows == (0, z.shape[0])
    z_rows = _masked(z if every_row else z[rows[0] : rows[1]], valid)
    log_probs = torch.log_softmax(z_rows, -1)  # [R, G, N], shared by the soft CLIP rows and the smooth KL
    outputs: list[Tensor] = []
    pointwise_y = soft_clip = None
    if positives is not None:  # the soft CLIP and point-wise terms
        p_rows = positives if every_row else positives[rows[0] : rows[1]]
        has_row, row_inverse = _inverse_mass(p_rows.sum(-1))
        if request.soft_clip:  # cross-entropy against P / mass: rows and columns without a positive add 0
            col_log_probs = torch.log_softmax(z, 0)  # [G, N] over the images
            has_col, col_inverse = _inverse_mass(positives.sum(0))
            if columns is not None:  # only this process's columns (local loss)
                has_col, col_inverse = has_col & columns, col_inverse * columns
            outputs += [
                ((p_rows * log_probs).sum(-1) * row_inverse).sum(0).neg(),
                has_row.sum(0, dtype=z.dtype),
                ((positives * col_log_probs).sum(0) * col_inverse).sum(1).neg(),
                has_col.sum(1, dtype=z.dtype),
            ]
            soft_clip = (has_row, row_inverse, has_col, col_inverse, col_log_probs, positives, p_rows)
        if request.pointwise:
            normalized = request.pointwise_target != "mask"
            pointwise_y = p_rows * row_inverse[..., None] if normalized else p_rows
            target_z = (pointwise_y * z_rows).sum((0, 2))  # y is 0 on absent texts, where z_rows is masked
            outputs.append(softplus_sum(z_rows, (0, 2)) - target_z)
    kl = _SmoothKL(z_rows, log_probs, valid, request.kl_direction) if request.smooth_kl else None
    if kl is not None:
        outputs.append(kl.total)
    return outputs, _State(z, z_rows, log_probs, pointwise_y, soft_clip, kl, every_row)


def _logit_gradient(state: _State, layout: _Layout, grads: tuple[Tensor | None, ...]) -> Tensor | None:
    """dL/dz [B, G, N] for the upstream gradients of the sums (None where every one is None)."""
    (start, stop), request = layout.rows, layout.request
    upstream = iter(grads)
    d_rows: Tensor | None = None  # dL/dz of this process's rows, [R, G, N]
    d_all: Tensor | None = None  # dL/dz of every row, [B, G, N]
    if state.soft_clip is not None:
        has_row, row_inverse, has_col, col_inverse, col_log_probs, positives, p_rows = state.soft_clip
        grad_rows, _, grad_cols, _ = (next(upstream) for _ in range(4))
        if grad_rows is not None:
            weight = grad_rows * has_row  # [R, G]
            kl = state.kl
            probs = kl.probs if kl is not None and kl.common is None else state.log_probs.exp()
            d_rows = _plus(d_rows, weight[..., None] * probs - (weight * row_inverse)[..., None] * p_rows)
        if grad_cols is not None:
            weight = grad_cols[:, None] * has_col  # [G, N]
            d_all = weight * col_log_probs.exp() - (weight * col_inverse) * positives
    if request.pointwise:
        grad = next(upstream)
        if grad is not None and state.pointwise_y is not None:
            d_rows = _plus(d_rows, grad[:, None] * (torch.sigmoid(state.z_rows) - state.pointwise_y))
    if request.smooth_kl:
        grad = next(upstream)
        if grad is not None and state.kl is not None:
            d_rows = _plus(d_rows, state.kl.backward(grad))
    if d_rows is None or state.every_row:
        return d_all if d_rows is None else _plus(d_all, d_rows)
    d_all = torch.zeros_like(state.z) if d_all is None else d_all
    d_all[start:stop] += d_rows
    return d_all


def _differentiable_backward(
    layout: _Layout,
    inputs: tuple[Tensor | None, ...],
    needs: tuple[bool, ...],
    grads: tuple[Tensor | None, ...],
) -> tuple[Tensor | None, ...]:
    """The input gradients by autograd through a recomputed forward, with ``create_graph=True``."""
    wanted = {i: tensor for i, tensor in enumerate(inputs) if tensor is not None and needs[i]}
    with torch.enable_grad():
        images, texts, scale, bias = inputs
        outputs, _, _ = _outputs(images, texts, scale, bias, layout)  # type: ignore[arg-type]
    pairs = [(out, grad) for out, grad in zip(outputs, grads, strict=True) if grad is not None and out.requires_grad]
    result: list[Tensor | None] = [None] * len(needs)
    if pairs and wanted:
        found = torch.autograd.grad(
            [out for out, _ in pairs],
            list(wanted.values()),
            [grad for _, grad in pairs],
            create_graph=True,
            allow_unused=True,
        )
        for i, gradient in zip(wanted, found, strict=True):
            result[i] = gradient
    return tuple(result)


class _SmoothKL:
    """The smooth KL of rows of logits (sum over rows and levels), and its gradient."""

    def __init__(self, z_rows: Tensor, log_probs: Tensor, valid: Tensor | None, direction: str) -> None:
        if valid is None:
            self.common = None
        else:  # on the columns present in every level; absent ones: log p = 0 and p = 0, adding nothing
            self.common = valid.all(0)
            masked = _masked(z_rows, self.common)
            log_probs = (masked - torch.logsumexp(masked, -1, keepdim=True)).masked_fill(~self.common, 0.0)
        levels = z_rows.shape[1]
        self.direction, self.log_probs = direction, log_probs
        self.probs = log_probs.exp() if self.common is None else log_probs.exp() * self.common
        self.mean = self.probs.mean(1, keepdim=True)
        # log m from m itself (cheaper than a logsumexp over the levels): m is 0 only where every p^g is
        # (absent, or below the smallest float), and there every term of the KL and its gradient is 0 * finite
        self.log_mean = self.mean.clamp_min(torch.finfo(self.mean.dtype).tiny).log()
        if direction == "to_mean":
            total = (self.probs * (log_probs - self.log_mean)).sum()
        else:
            self.gap = self.log_mean - log_probs.mean(1, keepdim=True)  # log m - mean_g log p^g
            total = levels * (self.mean * self.gap).sum()
        self.total = total if self.common is None else total * self.common.any()  # no common column: no KL

    def backward(self, grad: Tensor) -> Tensor:
        """dL/dz of the rows, [R, G, N], for an upstream gradient ``grad`` of the total."""
        if self.common is not None:
            grad = grad * self.common.any()
        probs = self.probs
        if self.direction == "to_mean":
            excess = self.log_probs - self.log_mean
            return grad * probs * (excess - (probs * excess).sum(-1, keepdim=True))
        shifted = self.gap - (probs * self.gap).sum(-1, keepdim=True) + 1.0
        return grad * (probs * shifted - self.mean)


def _plus(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def _padded_texts(problem: LossInputs, width: int) -> Tensor:
    """The texts of every level, each padded with zero rows to ``width``, [G * width, D], in the compute dtype."""
    texts = _as(problem.text_features, problem.compute_dtype)
    if all(n == width for n in problem.level_sizes):
        return texts
    return torch.cat([_pad(t, width, rows=True) for t in texts.split(problem.level_sizes)])


def _valid_columns(problem: LossInputs, width: int) -> Tensor | None:
    """bool [G, width]: present texts (not masked out, not padding); None when every column is valid."""
    if all(m is None for m in problem.text_masks) and all(n == width for n in problem.level_sizes):
        return None
    device = problem.image_features.device
    columns = []
    for mask, size in zip(problem.text_masks, problem.level_sizes, strict=True):
        present = torch.ones(size, dtype=torch.bool, device=device) if mask is None else mask
        columns.append(_pad(present, width))
    return torch.stack(columns)


def _column_range_mask(problem: LossInputs, width: int) -> Tensor:
    """bool [G, width]: the columns of each level in ``problem.column_ranges`` (a local loss's own texts)."""
    positions = torch.arange(width, device=problem.image_features.device)
    starts = positions.new_tensor([r.start for r in problem.column_ranges])[:, None]
    stops = positions.new_tensor([r.stop for r in problem.column_ranges])[:, None]
    return (positions >= starts) & (positions < stops)


def _positives(problem: LossInputs, width: int, valid: Tensor | None) -> Tensor:
    """P of every level, [B, G, width], zero on absent and padding columns."""
    dtype, device = problem.compute_dtype, problem.image_features.device
    batch = problem.image_features.shape[0]
    if width == batch and all(_has_label_keys(t) for t in problem.targets):
        # class ids and plain CLIP levels: one comparison of keys for every level (plain CLIP = all unlabelled)
        ids = torch.stack([_class_ids(t, batch, device) for t in problem.targets])  # [G, B]
        keys = torch.where(ids >= 0, ids, -1 - torch.arange(batch, device=device))  # unlabelled: a key of its own
        positives = (keys.t()[:, :, None] == keys).to(dtype)
    else:
        positives = torch.stack([_pad(t.full(dtype, device), width) for t in problem.targets], 1)
    return positives if valid is None else positives * valid


def _has_label_keys(targets: LevelTargets) -> bool:
    """Whether a level's mask is ``[key_i == key_j]`` of class ids (plain CLIP: every image unlabelled)."""
    return targets.multi_hot is None and targets.dense is None and targets.num_texts == targets.num_images


def _class_ids(targets: LevelTargets, batch: int, device: torch.device) -> Tensor:
    if targets.class_ids is None:
        return torch.full((batch,), -1, dtype=torch.long, device=device)
    return _as(targets.class_ids, torch.long)


def _as(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype`` (no operator at all when it already is)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _pad(tensor: Tensor, width: int, rows: bool = False) -> Tensor:
    """``tensor`` zero-padded to ``width`` columns (rows, with ``rows``); itself when nothing is missing."""
    missing = width - tensor.shape[0 if rows else -1]
    if missing == 0:
        return tensor
    return F.pad(tensor, (0, 0, 0, missing) if rows else (0, missing))


def _masked(logits: Tensor, valid: Tensor | None) -> Tensor:
    """``logits`` with the columns that are not ``valid`` set to the most negative finite number."""
    return logits if valid is None else logits.masked_fill(~valid, torch.finfo(logits.dtype).min)


def _inverse_mass(mass: Tensor) -> tuple[Tensor, Tensor]:
    """``mass > 0`` and ``1 / mass`` where mass > 0, else 0."""
    has = mass > 0
    return has, has / torch.where(has, mass, 1.0)
