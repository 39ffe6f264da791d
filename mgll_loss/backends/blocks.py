"""The math of one block of rows of a direction: forward sums and statistics, and the logits' gradient.

For a level with logits z [r, n], positives P and row / column log-sum-exps ``lse_r`` / ``lse_c``:

- soft CLIP row i (``mass_i = sum_j P_ij > 0``): ``lse_r_i - sum_j P_ij z_ij / mass_i``;
  gradient ``softmax_r(z)_ij - P_ij / mass_i``; columns likewise with ``lse_c``;
- point-wise: ``softplus(z_ij) - y_ij z_ij`` with y = P or P / mass (row-normalised);
  gradient ``sigmoid(z_ij) - y_ij``;
- smooth KL over the columns present in every level, ``l^g = log softmax(z^g)``,
  ``m = mean_g p^g`` (``log m`` by a log-sum-exp over levels): KL(p^g || m) per row
  ``k^g_i = sum_j p^g (l^g - log m)``, gradient ``p^g (l^g - log m - k^g_i)``; KL(m || p^g) summed
  over g is ``G sum_j m (log m - mean_g l^g)``, gradient ``p^g (c - <p^g, c>) + p^g - m`` with
  ``c = log m - mean_g l^g``.

Only per-row statistics ([G, R]) and per-column ones ([sum_g n_g]) outlive a block, which is
what makes the chunked backend memory-linear. Levels whose positives have keys get their
positive sums from :mod:`.label_keys` before the blocks, and their positive gradient after them;
other levels build each block's tile of P.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import DirectionSums
from .directions import Direction, DirectionLevel
from .label_keys import positive_pair_sums
from .softplus import softplus_sum


@dataclass
class RowStats:
    """Per level and row of the direction, [G, R].

    Log-sum-exp, positive mass and sum of positive logits, and the smooth KL's lse and dot.
    """

    lse: Tensor
    mass: Tensor
    pz: Tensor
    kl_lse: Tensor
    kl_dot: Tensor


@dataclass
class ColumnStats:
    """Per column of the direction, [sum_g n_g].

    Running max and sum of exp (online log-sum-exp), positive mass, sum of positive logits.
    """

    max: Tensor
    sumexp: Tensor
    mass: Tensor
    pz: Tensor

    def update(self, columns: slice, z: Tensor) -> None:
        """Fold a block of rows into the running log-sum-exp of ``columns``."""
        old = self.max[columns]
        new = torch.maximum(old, z.amax(0))
        shifted = torch.sub(z, new)
        self.sumexp[columns] = self.sumexp[columns] * torch.exp(old - new) + shifted.exp_().sum(0)
        self.max[columns] = new

    def lse(self) -> Tensor:
        """Column log-sum-exp."""
        return self.max + self.sumexp.log()


class DirectionState:
    """Everything the forward accumulates over the blocks of a direction, and what the backward needs."""

    def __init__(self, direction: Direction, device: torch.device, value_dependent: bool = False) -> None:
        levels, rows, cols, dtype = (
            direction.num_levels,
            direction.num_rows,
            direction.num_columns,
            direction.compute_dtype,
        )

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.rows = RowStats(*(zeros(levels, rows) for _ in range(5)))
        self.columns = ColumnStats(
            torch.full((cols,), -torch.inf, dtype=dtype, device=device), zeros(cols), zeros(cols), zeros(cols)
        )
        self.sums = DirectionSums.zeros(levels, dtype, device)
        self.column_lse: Tensor | None = None
        self.value_dependent = value_dependent  # of :class:`.policy.DevicePolicy` (host reads: CPU only)

    def add_label_key_masses(self, direction: Direction) -> None:
        """Fill the positive mass of every level with label keys: rows and columns (before the blocks)."""
        for g, level in enumerate(direction.levels):
            if level.keys is not None:
                self.rows.mass[g] = level.keys.col_counts[level.keys.rows]
                self.columns.mass[level.columns] = level.keys.row_counts[level.keys.cols].to(self.columns.mass.dtype)

    def finish(self, direction: Direction) -> DirectionSums:
        """Turn the column statistics into the column soft CLIP sums (after the last block)."""
        if direction.col_ce:
            self.column_lse = self.columns.lse()
            for g, level in enumerate(direction.levels):
                columns = level.columns
                self.sums.col_ce[g], self.sums.col_count[g] = cross_entropy_sums(
                    self.column_lse[columns], self.columns.pz[columns], self.columns.mass[columns]
                )
        return self.sums

    def finished_column_lse(self) -> Tensor:
        """The column log-sum-exps [sum_g n_g] computed by :meth:`finish`, which the backward needs."""
        if self.column_lse is None:
            raise RuntimeError("DirectionState.finish() must run (with the column term on) before the backward blocks")
        return self.column_lse

    def positive_coefficients(
        self, direction: Direction, g: int, rows: slice, grads: DirectionSums
    ) -> tuple[Tensor, Tensor | None]:
        """:func:`positive_coefficients` of level ``g`` for ``rows``."""
        col_mass = self.columns.mass[direction.levels[g].columns] if direction.col_ce else None
        return positive_coefficients(direction, g, self.rows.mass[g, rows], col_mass, grads)


def cross_entropy_sums(lse: Tensor, pz: Tensor, mass: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of soft cross-entropies ``lse - pz / mass`` over the rows (or columns) with a positive, and their count."""
    has = mass > 0
    return torch.where(has, lse - pz / _safe(mass), 0.0).sum(), has.sum()


def pointwise_sum(softplus_total: Tensor, pz: Tensor, mass: Tensor, target: str) -> Tensor:
    """Point-wise sum ``sum softplus(z) - sum y z`` from the per-row positive sums (y = P, or P / mass)."""
    target_z = pz if target == "mask" else (mass > 0) * pz / _safe(mass)
    return softplus_total - target_z.sum()


def positive_coefficients(
    direction: Direction, g: int, mass: Tensor, col_mass: Tensor | None, grads: DirectionSums
) -> tuple[Tensor, Tensor | None]:
    """(a [r], c [n] or None): the gradient of the sums has ``-P_ij (a_i + c_j)`` on logit z_ij of level ``g``.

    ``mass`` / ``col_mass`` are the positive masses of the rows and (with column terms) columns.
    """
    inverse_mass = (mass > 0) / _safe(mass)
    row_coef = torch.zeros_like(mass)
    if direction.row_ce:
        row_coef += grads.row_ce[g] * inverse_mass
    if direction.pointwise:
        row_coef += grads.pointwise[g] * (1.0 if direction.pointwise_target == "mask" else inverse_mass)
    if col_mass is None:
        return row_coef, None
    return row_coef, grads.col_ce[g] * (col_mass > 0) / _safe(col_mass)


def _safe(mass: Tensor) -> Tensor:
    """Mass with zeros replaced by one, for divisions whose result is then discarded."""
    return torch.where(mass > 0, mass, torch.ones_like(mass))


def _softmax(z: Tensor) -> tuple[Tensor, Tensor]:
    """Row log-sum-exp [r] and row softmax [r, n] of ``z``."""
    top = z.amax(1, keepdim=True)
    probs = torch.sub(z, top).exp_()
    total = probs.sum(1, keepdim=True)
    return (top + total.log()).squeeze(1), probs.div_(total)


def _tile(level: DirectionLevel, rows: slice, z: Tensor) -> Tensor:
    return level.targets.tile(rows, slice(0, level.size), z.dtype, z.device)


def forward_block(z: Tensor, rows: slice, direction: Direction, state: DirectionState) -> None:
    """Accumulate the sums and statistics of logits ``z`` [r, sum_g n_g] of direction rows ``rows``."""
    sums, stats = state.sums, state.rows
    shared_kl = direction.smooth_kl and direction.kl_common is None
    kl_inputs: list[tuple[Tensor, Tensor, Tensor]] = []  # per level: lse, log p, p
    for g, level in enumerate(direction.levels):
        if level.size == 0:
            continue
        zg = z[:, level.columns]
        if level.keys is None:
            positives = _tile(level, rows, zg)
            pz = positives * zg
            stats.mass[g, rows], stats.pz[g, rows] = positives.sum(1), pz.sum(1)
            col_pz = pz.sum(0)
            if direction.col_ce:
                state.columns.mass[level.columns] += positives.sum(0)
        else:
            stats.pz[g, rows], col_pz = positive_pair_sums(level.keys, rows, zg, state.value_dependent)
        if direction.col_ce:
            state.columns.pz[level.columns] += col_pz
        mass, row_pz = stats.mass[g, rows], stats.pz[g, rows]
        if direction.row_ce or shared_kl:
            lse, probs = _softmax(zg)
            stats.lse[g, rows] = lse
            if shared_kl:
                kl_inputs.append((lse, zg - lse[:, None], probs))
        if direction.row_ce:
            ce, count = cross_entropy_sums(lse, row_pz, mass)
            sums.row_ce[g] += ce
            sums.row_count[g] += count
        if direction.col_ce:
            state.columns.update(level.columns, zg)
        if direction.pointwise:
            sums.pointwise[g] += pointwise_sum(softplus_sum(zg), row_pz, mass, direction.pointwise_target)
    if direction.smooth_kl:
        inputs = kl_inputs if direction.kl_common is None else _kl_softmax(z, direction.levels, direction.kl_common)
        _kl_forward(inputs, rows, direction, state)


def backward_block(z: Tensor, rows: slice, direction: Direction, state: DirectionState, grads: DirectionSums) -> Tensor:
    """The gradient of the weighted sums with respect to logits ``z`` [r, sum_g n_g] of ``rows``.

    ``grads`` holds the upstream gradient of every sum (zeros where unused). The positive part
    of levels with label keys is left out (see :func:`.label_keys.positive_gradients`).
    """
    stats = state.rows
    shared_kl = direction.smooth_kl and direction.kl_common is None
    dz = torch.zeros_like(z)
    kl_probs: list[Tensor] = []
    for g, level in enumerate(direction.levels):
        if level.size == 0:
            continue
        zg, dzg = z[:, level.columns], dz[:, level.columns]
        if direction.row_ce or shared_kl:
            probs = torch.sub(zg, stats.lse[g, rows, None]).exp_()
            if shared_kl:
                kl_probs.append(probs)
            if direction.row_ce:
                dzg.addcmul_(probs, (grads.row_ce[g] * (stats.mass[g, rows] > 0))[:, None])
        if direction.col_ce:
            col_mass = state.columns.mass[level.columns]
            shifted = torch.sub(zg, state.finished_column_lse()[None, level.columns]).exp_()
            dzg.addcmul_(shifted, grads.col_ce[g] * (col_mass > 0))
        if direction.pointwise:
            dzg.addcmul_(torch.sigmoid(zg), grads.pointwise[g])
        if level.keys is None:
            row_coef, col_coef = state.positive_coefficients(direction, g, rows, grads)
            coef = row_coef[:, None] if col_coef is None else row_coef[:, None] + col_coef[None, :]
            dzg.sub_(_tile(level, rows, zg) * coef)
    if direction.smooth_kl:
        _kl_backward(dz, kl_probs if shared_kl else None, z, rows, direction, state, grads.smooth_kl)
    return dz


def _kl_logits(z: Tensor, level: DirectionLevel, common: Tensor | None) -> Tensor:
    """A level's logits for the smooth KL: the texts missing from some level set to the most negative number."""
    logits = z[:, level.columns]
    return logits if common is None else logits.masked_fill(~common, torch.finfo(z.dtype).min)


def _kl_log_probs(logits: Tensor, lse: Tensor, common: Tensor | None) -> Tensor:
    """``logits - lse``, 0 off ``common`` (where the softmax is 0: every term of the KL is then 0 * 0)."""
    log_probs = logits - lse[:, None]
    return log_probs if common is None else log_probs.masked_fill_(~common, 0.0)


def _kl_softmax(z: Tensor, levels: Sequence[DirectionLevel], common: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per level, on the columns present in every level (``common``): lse, log-softmax and softmax.

    The softmax is zeroed off ``common``, so a row without a common column has no smooth KL.
    """
    inputs = []
    for level in levels:
        logits = _kl_logits(z, level, common)
        lse, probs = _softmax(logits)
        inputs.append((lse, _kl_log_probs(logits, lse, common), probs.mul_(common)))
    return inputs


def _log_mean(log_probs: list[Tensor], probs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """m = mean_g p^g and log m = logsumexp_g(log p^g) - log G (exact where the levels agree)."""
    top = log_probs[0].clone()
    for lp in log_probs[1:]:
        torch.maximum(top, lp, out=top)
    total = torch.zeros_like(top)
    for lp in log_probs:
        total += torch.sub(lp, top).exp_()
    mean = probs[0].clone()
    for p in probs[1:]:
        mean += p
    return mean.div_(len(probs)), total.div_(len(probs)).log_().add_(top)


def _mean_log(log_probs: list[Tensor]) -> Tensor:
    total = log_probs[0].clone()
    for lp in log_probs[1:]:
        total += lp
    return total.div_(len(log_probs))


def _kl_forward(
    inputs: list[tuple[Tensor, Tensor, Tensor]], rows: slice, direction: Direction, state: DirectionState
) -> None:
    if not inputs:
        return
    lses, log_probs, probs = zip(*inputs, strict=True)
    mean, log_mean = _log_mean(list(log_probs), list(probs))
    if direction.kl_direction == "to_mean":
        dots = [torch.linalg.vecdot(p, lp - log_mean) for p, lp in zip(probs, log_probs, strict=True)]
        total = sum(d.sum() for d in dots)
    else:
        contrast = log_mean.sub_(_mean_log(list(log_probs)))
        dots = [torch.linalg.vecdot(p, contrast) for p in probs]
        total = len(probs) * torch.linalg.vecdot(mean, contrast).sum()
    for g, (lse, dot) in enumerate(zip(lses, dots, strict=True)):
        state.rows.kl_lse[g, rows] = lse
        state.rows.kl_dot[g, rows] = dot
    state.sums.smooth_kl += total


def _kl_backward(
    dz: Tensor,
    probs: list[Tensor] | None,
    z: Tensor,
    rows: slice,
    direction: Direction,
    state: DirectionState,
    grad: Tensor,
) -> None:
    """Add the smooth KL's gradient to ``dz``; ``probs`` are the row softmaxes when every level has every column."""
    stats = state.rows
    common = direction.kl_common
    logits = [_kl_logits(z, level, common) for level in direction.levels]
    log_probs = [_kl_log_probs(x, stats.kl_lse[g, rows], common) for g, x in enumerate(logits)]
    if probs is None:
        probs = [lp.exp() if common is None else lp.exp().mul_(common) for lp in log_probs]
    mean, log_mean = _log_mean(log_probs, probs)
    contrast = None if direction.kl_direction == "to_mean" else log_mean.sub_(_mean_log(log_probs))
    for g, (level, p, lp) in enumerate(zip(direction.levels, probs, log_probs, strict=True)):
        dot = stats.kl_dot[g, rows, None]
        if contrast is None:
            grad_g = lp.sub_(log_mean).sub_(dot).mul_(p)
        else:
            grad_g = (contrast - dot).mul_(p).add_(p).sub_(mean)
        dz[:, level.columns].add_(grad_g.mul_(grad))
