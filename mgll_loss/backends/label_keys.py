"""Positives given by keys (``P_ij = [k_i == k'_j]``: class ids, the identity, exact label sets) without tiles of P.

The forward sums the positive logits of a block from a tile of P compared from the keys, or on
CPU tensors gathers them by their (row, column) pairs (fewer operations, but their number is read
on the host; :mod:`.policy` decides). Keys are renumbered into a range known from the shapes
(:func:`~mgll_loss.positives.dense_keys`), so no size depends on label values. The positive
part of the gradient, ``-P_ij (a_i + c_j)`` on logit z_ij, reaches the features through
per-key feature sums ``S_k = sum_{j: k'_j = k} t_j`` and ``U_k = sum_{i: k_i = k} v_i``:
``dV_i = -s (a_i S_{k_i} + sum_{j: k'_j = k_i} c_j t_j)`` and likewise for the texts, which costs
O((R + n) D) and never builds a B x N mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LabelKeys", "positive_gradients", "positive_pair_sums"]


def _key_sums(keys: Tensor, count: int, values: Tensor) -> Tensor:
    """Sum the rows of ``values`` [m, D] per key: [count, D]."""
    return values.new_zeros(count, values.shape[1]).index_add_(0, keys, values)


def _key_counts(keys: Tensor, count: int) -> Tensor:
    """How many entries of ``keys`` hold each key, [count] (a ``bincount`` of static size)."""
    return torch.zeros(count, dtype=torch.long, device=keys.device).index_add_(0, keys, torch.ones_like(keys))


@dataclass(frozen=True)
class LabelKeys:
    """``P_ij = [rows_i == cols_j]``: row keys [R] and column keys [n] in ``range(count)``.

    ``count`` is a bound known from the shapes (not the number of distinct keys), so that no
    size depends on label values.

    Attributes:
        rows, cols: the keys.
        count: every key is below it.
        row_counts, col_counts: how many rows / columns have each key, [count].
        col_order: the columns sorted by key; key k's columns are ``col_order[col_starts[k] :][: col_counts[k]]``.
        col_starts: [count].
    """

    rows: Tensor
    cols: Tensor
    count: int
    row_counts: Tensor
    col_counts: Tensor
    col_order: Tensor
    col_starts: Tensor

    @classmethod
    def build(cls, rows: Tensor, cols: Tensor, count: int) -> LabelKeys:
        col_counts = _key_counts(cols, count)
        return cls(
            rows,
            cols,
            count,
            _key_counts(rows, count),
            col_counts,
            torch.argsort(cols, stable=True),
            torch.cumsum(col_counts, 0) - col_counts,
        )

    def tile(self, rows: slice, dtype: torch.dtype) -> Tensor:
        """P of direction rows ``rows`` against every column, [r, n], by comparing keys (static shapes)."""
        return (self.rows[rows, None] == self.cols[None, :]).to(dtype)

    def pairs(self, rows: slice) -> tuple[Tensor, Tensor]:
        """Every positive (row, column) of ``rows``: row positions within ``rows`` and column indices.

        Their number depends on the labels (read on the host): for CPU tensors only (see
        :mod:`.policy`); :meth:`tile` is the static-shape form.
        """
        keys = self.rows[rows]
        per_row = self.col_counts[keys]
        local_rows = torch.repeat_interleave(torch.arange(keys.shape[0], device=keys.device), per_row)
        first = torch.cumsum(per_row, 0) - per_row
        rank = torch.arange(local_rows.shape[0], device=keys.device) - first[local_rows]
        return local_rows, self.col_order[self.col_starts[keys][local_rows] + rank]


def positive_pair_sums(keys: LabelKeys, rows: slice, z: Tensor, gather: bool) -> tuple[Tensor, Tensor]:
    """Sums of the positive logits of a block ``z`` [r, n] (direction rows ``rows``): per row [r], and per column [n].

    Taken from the logits themselves, so a row whose only positive dominates gets a cross-entropy
    of exactly zero. With ``gather`` the positive logits are gathered by their (row, column) pairs
    (few operations, but a host read: CPU only), else a tile of P is compared from the keys.
    """
    if not gather:
        pz = keys.tile(rows, z.dtype).mul_(z)
        return pz.sum(1), pz.sum(0)
    local_rows, cols = keys.pairs(rows)
    values = z[local_rows, cols]
    row_pz = z.new_zeros(z.shape[0]).index_add_(0, local_rows, values)
    return row_pz, z.new_zeros(z.shape[1]).index_add_(0, cols, values)


def positive_gradients(
    keys: LabelKeys,
    images: Tensor,
    texts: Tensor,
    scale: Tensor,
    row_coef: Tensor,
    col_coef: Tensor | None,
    value_dependent: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``-sum_ij P_ij (a_i + c_j) z_ij`` (a = ``row_coef`` [R], c = ``col_coef`` [n] or 0).

    The per-key feature sums have ``keys.count`` rows (a bound known from the shapes), or with
    ``value_dependent`` (CPU: the read costs nothing) only as many as the keys present.

    Returns:
        d/dV [R, D], d/dT [n, D], d/ds (0-dim), d/db (0-dim).
    """
    count = keys.count
    if value_dependent:  # renumbered keys fill range(K): fresh [count, D] buffers would mostly be zeros
        count = int(torch.maximum(keys.rows.max(), keys.cols.max())) + 1
    text_sums = _key_sums(keys.cols, count, texts)
    image_sums = _key_sums(keys.rows, count, images)
    weighted_images = _key_sums(keys.rows, count, row_coef[:, None] * images)
    row_mass = keys.col_counts.to(images.dtype)[keys.rows]
    grad_images = row_coef[:, None] * text_sums[keys.rows]
    grad_texts = weighted_images[keys.cols]
    grad_scale = (row_coef * (images * text_sums[keys.rows]).sum(1)).sum()
    grad_bias = (row_coef * row_mass).sum()
    if col_coef is not None:
        weighted_texts = _key_sums(keys.cols, count, col_coef[:, None] * texts)
        col_mass = keys.row_counts.to(images.dtype)[keys.cols]
        grad_images = grad_images + weighted_texts[keys.rows]
        grad_texts = grad_texts + col_coef[:, None] * image_sums[keys.cols]
        grad_scale = grad_scale + (col_coef * (texts * image_sums[keys.cols]).sum(1)).sum()
        grad_bias = grad_bias + (col_coef * col_mass).sum()
    return -scale * grad_images, -scale * grad_texts, -grad_scale, -grad_bias
