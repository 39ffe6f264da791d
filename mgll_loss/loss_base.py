"""What every loss module shares: the backend and the torch.distributed options, and the norm check."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backends import check_backend, check_chunk_size
from .global_batch import DistributedOptions
from .norm_check import UnitNormCheck

__all__ = ["LossBase"]


def _is_compiling() -> bool:
    """True while torch.compile traces (the tests replace it to take the compiled path eagerly)."""
    return torch.compiler.is_compiling()


class LossBase(nn.Module):
    """Holds the backend and the torch.distributed options shared by every loss.

    Calls outside torch.compile tracing also check that the features are L2-normalised, on the
    first call and every :data:`~mgll_loss.norm_check.NORM_CHECK_EVERY` calls after, and warn once
    if not (:class:`~mgll_loss.norm_check.UnitNormCheck`: on CUDA without a synchronisation).
    """

    def __init__(
        self,
        backend: str,
        chunk_size: int | None,
        local_loss: bool,
        gather_with_grad: bool,
        rank: int | None,
        world_size: int | None,
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.chunk_size = check_chunk_size(chunk_size)
        self.distributed = DistributedOptions(local_loss, gather_with_grad, rank, world_size)
        self.norm_check = UnitNormCheck()

    def _check_norms(self, image_features: Any, text_features: Any, text_mask: Any) -> None:
        if not _is_compiling():  # stacklevel 5: the caller of loss(...); absent texts' rows are not checked
            self.norm_check(image_features, text_features, stacklevel=5, text_mask=text_mask)

    def _common_options(self) -> dict[str, Any]:
        options = self.distributed  # its fields by name (dataclasses.asdict deep-copies: slow on every call)
        return dict(
            backend=self.backend,
            chunk_size=self.chunk_size,
            local_loss=options.local_loss,
            gather_with_grad=options.gather_with_grad,
            rank=options.rank,
            world_size=options.world_size,
        )

    def _common_repr(self) -> str:
        options = self.distributed
        chunk = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        distributed = f"local_loss={options.local_loss}, gather_with_grad={options.gather_with_grad}"
        return f"backend={self.backend!r}{chunk}, {distributed}"
