"""Small training utilities."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["clamp_logit_scale"]


def clamp_logit_scale(parameter: Tensor, max_value: float = 100.0) -> Tensor:
    """Clamp a learnable log-temperature in place to ``[0, log(max_value)]`` and return it.

    The parameter holds :math:`\\log s` (open_clip and Hugging Face CLIP store it so), so the
    exponentiated scale passed to the losses stays in ``[1, max_value]``. Call it after each
    optimiser step, as open_clip's trainer does.

    Args:
        parameter: the log logit scale, e.g. ``model.logit_scale``.
        max_value: the largest allowed exponentiated scale (> 1).

    Example:
        >>> scale = torch.nn.Parameter(torch.tensor(7.0))
        >>> float(clamp_logit_scale(scale).detach().exp())
        100.00000762939453
    """
    if not isinstance(parameter, Tensor):
        raise TypeError(f"parameter: expected a tensor (the log logit scale), got {type(parameter).__name__}")
    if not isinstance(max_value, (int, float)) or isinstance(max_value, bool):
        raise TypeError(f"max_value: expected a number > 1, got {type(max_value).__name__}")
    if not max_value > 1:
        raise ValueError(f"max_value: expected a number > 1, got {max_value!r}")
    with torch.no_grad():
        parameter.clamp_(0.0, math.log(max_value))
    return parameter
