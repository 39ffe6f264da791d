"""torch.distributed helpers: which rank this is, and gathering rows from every rank.

Gathers pad uneven local batches to the largest one, so a last batch without ``drop_last`` is
handled; the autograd-aware gather sums the gradients of every rank back to the owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "World",
    "resolve_world",
    "all_gather_ints",
    "raise_on_every_rank",
    "gather_rows",
    "all_reduce_sum",
    "scale_gradient",
]


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: ``rank`` in ``range(world_size)``."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        """True when the loss must see other ranks' rows."""
        return self.world_size > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def resolve_world(rank: int | None, world_size: int | None) -> World:
    """Fill ``rank`` / ``world_size`` from the default process group when not given, and check them."""
    for name, value in (("rank", rank), ("world_size", world_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name}: expected an int or None, got {type(value).__name__}")
    if world_size is None:
        world_size = dist.get_world_size() if _initialized() else 1
    if rank is None:
        rank = dist.get_rank() if _initialized() else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size > 1:
        if not _initialized():
            raise ValueError(f"world_size: {world_size} ranks need an initialised torch.distributed process group")
        if (dist.get_world_size(), dist.get_rank()) != (world_size, rank):
            raise ValueError(
                f"rank/world_size: got rank={rank}, world_size={world_size} but the process group has "
                f"rank={dist.get_rank()}, world_size={dist.get_world_size()}"
            )
    return World(rank=rank, world_size=world_size)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_ints(values: list[int]) -> Tensor:
    """Gather a short list of ints, the same length on every rank.

    Returns int64 [world_size, len(values)] on the CPU.
    """
    local = torch.tensor(values, dtype=torch.int64, device=_collective_device())
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.stack(gathered).cpu()


def raise_on_every_rank(error: Exception | None, num_levels: int) -> None:
    """Agree across ranks on local validation before any other collective.

    Every rank sends whether its inputs failed validation and its number of levels; if any rank
    failed, or the ranks disagree on G, every rank raises, so none is left waiting in a gather.
    """
    status = all_gather_ints([int(error is not None), num_levels])
    if error is not None:
        raise error
    failed = [rank for rank, bad in enumerate(status[:, 0].tolist()) if bad]
    if failed:
        raise ValueError(
            f"rank(s) {failed} rejected their inputs (their error names the argument); stopping every rank"
        )
    levels = status[:, 1].tolist()
    if len(set(levels)) > 1:
        raise ValueError(f"text_features: every rank must pass the same number of levels G, got G={levels} per rank")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum a tensor over ranks (no gradient; for counts)."""
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_rows(tensor: Tensor, sizes: list[int], world: World, *, with_grad: bool) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (rank order); rank r holds ``sizes[r]`` rows.

    With ``with_grad`` the gather is autograd-aware: its backward sums every rank's gradient
    into the owner's rows. Without it, only this rank's own rows carry gradient.
    """
    longest = max(sizes)
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, longest - tensor.shape[0]))
    if with_grad:
        stacked = _autograd_all_gather(padded)
        pieces = list(stacked.split(longest))
    else:
        wire = padded.detach().to(torch.uint8) if padded.dtype == torch.bool else padded.detach()
        pieces = [torch.empty_like(wire) for _ in range(world.world_size)]
        dist.all_gather(pieces, wire)
        pieces = [p.to(padded.dtype) for p in pieces]
        pieces[world.rank] = padded
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])


def _autograd_all_gather(tensor: Tensor) -> Tensor:
    """All-gather along dim 0 whose backward sums gradients across ranks (newest torch API first: torch >= 2.9)."""
    from torch.distributed import _functional_collectives as collectives

    tensor = tensor.contiguous()
    group = dist.group.WORLD
    if group is None:
        raise RuntimeError("gather_with_grad: torch.distributed has no default process group (call init_process_group)")
    if hasattr(collectives, "all_gather_single_autograd"):
        gathered = collectives.all_gather_single_autograd(tensor, 0, group)
    else:  # its name before torch 2.10
        gathered = collectives.all_gather_tensor_autograd(tensor, 0, group)
    return collectives.wait_tensor(gathered)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(tensor: Tensor, factor: float) -> Tensor:
    """Identity in the forward; multiplies the gradient by ``factor`` in the backward."""
    return _ScaleGradient.apply(tensor, factor)
