"""The math of one block of rows of a sweep: forward sums and statistics, and the logits' gradient.

For a level with logits z [r, n], positives P and row / column log-sum-exps ``lse_r`` / ``lse_c``:

- soft CLIP row i (``mass_i = sum_j P_ij > 0``): ``lse_r_i - sum_j P_ij z_ij / mass_i``;
  gradient ``softmax_r(z)_ij - P_ij / mass_i``; columns likewise with ``lse_c``;
- point-wise: ``softplus(z_ij) - y_ij z_ij`` with y = P or P / mass (row-normalised);
  gradient ``sigmoid(z_ij) - y_ij``;
- smooth KL over the columns present in every level, ``l^g = log softmax(z^g)``,
  ``m = mean_g p^g``: KL(p^g || m) per row ``k^g_i = sum_j p^g (l^g - log m)``, gradient
  ``p^g (l^g - log m - k^g_i)``; KL(m || p^g) summed over g is ``G sum_j m (log m - mean_g l^g)``,
  gradient ``p^g (c - <p^g, c>) + p^g - m`` with ``c = log m - mean_g l^g``.

Only per-row statistics ([G, R]) and per-column ones ([sum_g n_g]) outlive a block, which is
what makes the chunked backend memory-linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .plan import Sweep


@dataclass
class RowStats:
    """Per level and row of the sweep, [G, R]: log-sum-exp, positive mass, and the smooth KL's lse and dot."""

    lse: Tensor
    mass: Tensor
    kl_lse: Tensor
    kl_dot: Tensor


@dataclass
class ColumnStats:
    """Per column of the sweep, [sum_g n_g]: running max and sum of exp (online log-sum-exp), mass, sum P z."""

    max: Tensor
    sumexp: Tensor
    mass: Tensor
    pz: Tensor

    def update(self, columns: slice, z: Tensor, positives: Tensor, pz: Tensor) -> None:
        """Fold a block of rows into the statistics of ``columns``."""
        old = self.max[columns]
        new = torch.maximum(old, z.amax(0))
        self.sumexp[columns] = self.sumexp[columns] * torch.exp(old - new) + torch.exp(z - new).sum(0)
        self.max[columns] = new
        self.mass[columns] += positives.sum(0)
        self.pz[columns] += pz.sum(0)

    def lse(self) -> Tensor:
        """Column log-sum-exp."""
        return self.max + self.sumexp.log()


@dataclass
class SweepSums:
    """A sweep's sums: soft CLIP rows / columns with their counts and point-wise per level [G], smooth KL 0-dim."""

    row_ce: Tensor
    row_count: Tensor
    col_ce: Tensor
    col_count: Tensor
    pointwise: Tensor
    smooth_kl: Tensor

    def as_tuple(self) -> Tuple[Tensor, ...]:
        return self.row_ce, self.row_count, self.col_ce, self.col_count, self.pointwise, self.smooth_kl


class SweepState:
    """Everything the forward accumulates over the blocks of a sweep, and what the backward needs."""

    def __init__(self, sweep: Sweep, device: torch.device) -> None:
        levels, rows, cols, dtype = sweep.num_levels, sweep.num_rows, sweep.num_columns, sweep.compute_dtype

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.rows = RowStats(zeros(levels, rows), zeros(levels, rows), zeros(levels, rows), zeros(levels, rows))
        self.columns = ColumnStats(torch.full((cols,), -torch.inf, dtype=dtype, device=device), zeros(cols),
                                   zeros(cols), zeros(cols))
        self.sums = SweepSums(zeros(levels), zeros(levels), zeros(levels), zeros(levels), zeros(levels), zeros())
        self.column_lse: Optional[Tensor] = None

    def finish(self, sweep: Sweep) -> SweepSums:
        """Turn the column statistics into the column soft CLIP sums (after the last block)."""
        if sweep.col_ce:
            self.column_lse = self.columns.lse()
            has = self.columns.mass > 0
            per_column = torch.where(has, self.column_lse - self.columns.pz / _safe(self.columns.mass), 0.0)
            for g, level in enumerate(sweep.levels):
                self.sums.col_ce[g] = per_column[level.columns].sum()
                self.sums.col_count[g] = has[level.columns].sum()
        return self.sums


def _safe(mass: Tensor) -> Tensor:
    """Mass with zeros replaced by one, for divisions whose result is then discarded."""
    return torch.where(mass > 0, mass, torch.ones_like(mass))


def forward_block(z: Tensor, rows: slice, sweep: Sweep, state: SweepState) -> None:
    """Accumulate the sums and statistics of logits ``z`` [r, sum_g n_g] of sweep rows ``rows``."""
    sums, stats = state.sums, state.rows
    for g, level in enumerate(sweep.levels):
        if level.size == 0:
            continue
        zg = z[:, level.columns]
        positives = level.targets.tile(rows, slice(0, level.size), z.dtype, z.device)
        pz = positives * zg
        mass = positives.sum(1)
        row_pz = pz.sum(1)
        stats.mass[g, rows] = mass
        has = mass > 0
        if sweep.row_ce:
            lse = torch.logsumexp(zg, 1)
            stats.lse[g, rows] = lse
            sums.row_ce[g] += torch.where(has, lse - row_pz / _safe(mass), 0.0).sum()
            sums.row_count[g] += has.sum()
        if sweep.col_ce:
            state.columns.update(level.columns, zg, positives, pz)
        if sweep.pointwise:
            target_z = pz if sweep.pointwise_target == "mask" else pz / _safe(mass)[:, None]
            sums.pointwise[g] += (F.softplus(zg) - target_z).sum()
    if sweep.smooth_kl:
        _kl_forward(z, rows, sweep, state)


def backward_block(z: Tensor, rows: slice, sweep: Sweep, state: SweepState, grads: SweepSums) -> Tensor:
    """The gradient of the weighted sums with respect to logits ``z`` [r, sum_g n_g] of ``rows``.

    ``grads`` holds the upstream gradient of every sum (zeros where unused).
    """
    stats = state.rows
    dz = torch.zeros_like(z)
    for g, level in enumerate(sweep.levels):
        if level.size == 0:
            continue
        zg, dzg = z[:, level.columns], dz[:, level.columns]
        positives = level.targets.tile(rows, slice(0, level.size), z.dtype, z.device)
        mass = stats.mass[g, rows]
        has = mass > 0
        row_coef = torch.zeros_like(mass)
        col_coef: Optional[Tensor] = None
        if sweep.row_ce:
            weight = grads.row_ce[g] * has
            dzg += torch.exp(zg - stats.lse[g, rows, None]) * weight[:, None]
            row_coef += weight / _safe(mass)
        if sweep.col_ce:
            col_mass = state.columns.mass[level.columns]
            weight = grads.col_ce[g] * (col_mass > 0)
            dzg += torch.exp(zg - state.column_lse[None, level.columns]) * weight
            col_coef = weight / _safe(col_mass)
        if sweep.pointwise:
            dzg += grads.pointwise[g] * torch.sigmoid(zg)
            if sweep.pointwise_target == "mask":
                row_coef += grads.pointwise[g]
            else:
                row_coef += grads.pointwise[g] * has / _safe(mass)
        coef = row_coef[:, None] if col_coef is None else row_coef[:, None] + col_coef[None, :]
        dzg -= positives * coef
    if sweep.smooth_kl:
        _kl_backward(z, dz, rows, sweep, state, grads.smooth_kl)
    return dz


def _kl_logits(z: Tensor, sweep: Sweep) -> List[Tensor]:
    """Each level's logits on the columns present in every level."""
    if sweep.kl_columns is None:
        return [z[:, level.columns] for level in sweep.levels]
    return [z[:, level.offset + positions] for level, positions in zip(sweep.levels, sweep.kl_columns)]


def _kl_terms(log_probs: List[Tensor]) -> Tuple[List[Tensor], Tensor, Tensor]:
    """Probabilities p^g, the mean m and log m (m clamped to the smallest normal, where every p^g underflows)."""
    probs = [lp.exp() for lp in log_probs]
    mean = torch.stack(probs).mean(0)
    return probs, mean, mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def _kl_forward(z: Tensor, rows: slice, sweep: Sweep, state: SweepState) -> None:
    logits = _kl_logits(z, sweep)
    if logits[0].shape[1] == 0:
        return
    lses = [torch.logsumexp(x, 1) for x in logits]
    log_probs = [x - lse[:, None] for x, lse in zip(logits, lses)]
    probs, mean, log_mean = _kl_terms(log_probs)
    if sweep.kl_direction == "to_mean":
        dots = [(p * (lp - log_mean)).sum(1) for p, lp in zip(probs, log_probs)]
        total = torch.stack(dots).sum()
    else:
        contrast = log_mean - torch.stack(log_probs).mean(0)
        dots = [(p * contrast).sum(1) for p in probs]
        total = len(probs) * (mean * contrast).sum()
    for g, (lse, dot) in enumerate(zip(lses, dots)):
        state.rows.kl_lse[g, rows] = lse
        state.rows.kl_dot[g, rows] = dot
    state.sums.smooth_kl += total


def _kl_backward(z: Tensor, dz: Tensor, rows: slice, sweep: Sweep, state: SweepState, grad: Tensor) -> None:
    logits = _kl_logits(z, sweep)
    if logits[0].shape[1] == 0:
        return
    stats = state.rows
    log_probs = [x - stats.kl_lse[g, rows, None] for g, x in enumerate(logits)]
    probs, mean, log_mean = _kl_terms(log_probs)
    contrast = None if sweep.kl_direction == "to_mean" else log_mean - torch.stack(log_probs).mean(0)
    for g, (level, p, lp) in enumerate(zip(sweep.levels, probs, log_probs)):
        dot = stats.kl_dot[g, rows, None]
        if contrast is None:
            grad_g = p * (lp - log_mean - dot)
        else:
            grad_g = p * (contrast - dot) + p - mean
        grad_g = grad_g * grad
        if sweep.kl_columns is None:
            dz[:, level.columns] += grad_g
        else:
            dz[:, level.columns].index_add_(1, sweep.kl_columns[g], grad_g)
