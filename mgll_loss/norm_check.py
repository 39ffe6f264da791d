"""The sampled unit-norm check of the loss modules: the losses expect L2-normalised features and
never normalise them, so a model that stops normalising (a missing ``F.normalize`` after a
refactor) is warned about, not silently trained with inflated logits.

The check runs on the first call of a loss module and then every :attr:`UnitNormCheck.every` calls,
until it has warned once. It never synchronises with a GPU: on CUDA the norms' extremes (a few
floats) are copied to the host asynchronously and read on a later call, once the copy is done.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .devices import on_accelerator

__all__ = ["NORM_CHECK_EVERY", "UNIT_NORM_TOLERANCE", "UnitNormCheck"]

UNIT_NORM_TOLERANCE = 1e-2
"""Features whose L2 norms differ from 1 by more than this get a warning."""

NORM_CHECK_EVERY = 100
"""Calls between two samples of the norms (the first call is always checked)."""


def _named_features(image_features: Any, text_features: Any, text_mask: Any) -> list[tuple[str, Tensor, Any]]:
    """The well-formed feature tensors of a call by argument name, each with the mask of its present rows.

    Malformed features are left out (validation names them); a text mask that does not fit its
    features is ignored (validation names it too), so placeholder rows of absent texts never warn.
    """
    if isinstance(text_features, (list, tuple)):
        levels = list(text_features)
        if isinstance(text_mask, (list, tuple)) and len(text_mask) == len(levels):
            masks = list(text_mask)
        elif isinstance(text_mask, Tensor) and text_mask.dim() == 2 and text_mask.shape[0] == len(levels):
            masks = list(text_mask.unbind(0))
        else:
            masks = [None] * len(levels)
    else:
        levels, masks = [text_features], [text_mask]
    named: list[tuple[str, Any, tuple[int, ...], Any]] = [("image_features", image_features, (2,), None)]
    named += [("text_features", t, (2, 3), m) for t, m in zip(levels, masks, strict=True)]
    return [
        (name, value, mask if _fits(mask, value) else None)
        for name, value, dims, mask in named
        if isinstance(value, Tensor)
        and value.is_floating_point()
        and value.numel() > 0
        and value.dim() in dims
        and not value.is_meta
    ]


def _fits(mask: Any, features: Tensor) -> bool:
    """A boolean mask with one entry per feature row, on the features' device."""
    return (
        isinstance(mask, Tensor)
        and mask.dtype == torch.bool
        and tuple(mask.shape) == tuple(features.shape[:-1])
        and mask.device == features.device
    )


def _norm_extremes(features: Tensor, mask: Tensor | None) -> Tensor:
    """[min, max] of the rows' L2 norms; rows of absent texts count as norm 1."""
    norms = features.detach().float().norm(dim=-1)
    if mask is not None:
        norms = torch.where(mask, norms, torch.ones_like(norms))
    return torch.stack(torch.aminmax(norms))


class UnitNormCheck:
    """Warn (``UserWarning``, once) when feature rows are far from unit L2 norm; sampled, never a GPU sync.

    Args:
        every: calls between two samples; the first call is sampled. ``0`` turns the check off.

    The caller skips it while ``torch.compile`` traces (a host read would break the graph).

    Example:
        >>> import warnings
        >>> check = UnitNormCheck(every=100)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check(torch.eye(3), torch.eye(3), stacklevel=1)  # call 0: sampled, unit norm
        ...     check(2 * torch.eye(3), torch.eye(3), stacklevel=1)  # call 1: not sampled
        ...     for _ in range(99):
        ...         check(2 * torch.eye(3), torch.eye(3), stacklevel=1)  # call 100: sampled
        >>> [str(w.message)[:42] for w in caught]
        ['image_features: L2 norms range from 2 to 2']
    """

    def __init__(self, every: int = NORM_CHECK_EVERY) -> None:
        self.every = every
        self.calls = 0
        self.warned = False
        self._pending: tuple[list[str], Tensor, Any] | None = None  # names, host extremes, CUDA event

    def __getstate__(self) -> dict[str, Any]:
        """A copy (deepcopy, pickling) forgets a sample in flight: a CUDA event does not copy."""
        return {**self.__dict__, "_pending": None}

    def __call__(self, image_features: Any, text_features: Any, stacklevel: int, text_mask: Any = None) -> None:
        """Sample this call's norms if it is due; warn about a sample whose values have reached the host."""
        if self.warned or self.every <= 0:
            return
        self._read_pending(stacklevel + 1)
        if self.calls % self.every == 0 and not self.warned:
            self._sample(_named_features(image_features, text_features, text_mask), stacklevel + 1)
        self.calls += 1

    def _sample(self, named: list[tuple[str, Tensor, Any]], stacklevel: int) -> None:
        if not named:
            return
        with torch.no_grad():
            extremes = torch.stack([_norm_extremes(value, mask) for _, value, mask in named])
        names = [name for name, _, _ in named]
        if _reads_now(extremes.device):
            self._pending = (names, extremes.cpu(), None)
            self._read_pending(stacklevel + 1)
            return
        event = None
        if extremes.device.type == "cuda":
            event = torch.cuda.Event()
        host = extremes.to("cpu", non_blocking=True)
        if event is not None:
            event.record()
        self._pending = (names, host, event)

    def _read_pending(self, stacklevel: int) -> None:
        if self._pending is None:
            return
        names, host, event = self._pending
        if event is not None and not event.query():  # the copy has not landed yet: read it on a later call
            return
        self._pending = None
        for name, (low, high) in zip(names, host.tolist(), strict=True):
            if max(abs(low - 1.0), abs(high - 1.0)) > UNIT_NORM_TOLERANCE:
                self.warned = True
                warnings.warn(
                    f"{name}: L2 norms range from {low:.3g} to {high:.3g}; the MGLL losses expect L2-normalised "
                    "features (norm 1) and never normalise them: use torch.nn.functional.normalize(x, dim=-1) "
                    "(unnormalised features scale every logit and inflate the loss)",
                    UserWarning,
                    stacklevel=stacklevel + 1,
                )
                return


def _reads_now(device: torch.device) -> bool:
    """True where reading a value costs no synchronisation (CPU): the sample is read at once.

    Inside :func:`~mgll_loss.devices.accelerator_policy` (tests) CPU tensors are read as on CUDA: later.
    """
    return not on_accelerator(device)
