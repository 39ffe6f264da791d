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


def _named_features(image_features: Any, text_features: Any) -> list[tuple[str, Tensor]]:
    """The well-formed feature tensors of a call, by argument name (malformed ones: validation names them)."""
    texts = text_features if isinstance(text_features, (list, tuple)) else [text_features]
    named = [("image_features", image_features, (2,))] + [("text_features", t, (2, 3)) for t in texts]
    return [
        (name, value)
        for name, value, dims in named
        if isinstance(value, Tensor)
        and value.is_floating_point()
        and value.numel() > 0
        and value.dim() in dims
        and not value.is_meta
    ]


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

    def __call__(self, image_features: Any, text_features: Any, stacklevel: int) -> None:
        """Sample this call's norms if it is due; warn about a sample whose values have reached the host."""
        if self.warned or self.every <= 0:
            return
        self._read_pending(stacklevel + 1)
        if self.calls % self.every == 0 and not self.warned:
            self._sample(_named_features(image_features, text_features), stacklevel + 1)
        self.calls += 1

    def _sample(self, named: list[tuple[str, Tensor]], stacklevel: int) -> None:
        if not named:
            return
        with torch.no_grad():
            extremes = torch.stack([torch.stack(torch.aminmax(v.detach().float().norm(dim=-1))) for _, v in named])
        names = [name for name, _ in named]
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
