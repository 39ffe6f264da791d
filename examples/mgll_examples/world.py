"""The process group of a torchrun launch (gloo on CPU, nccl on CUDA), or a single process.

Ending a torchrun worker cleanly takes three steps: a barrier once every rank has finished its
collectives, ``destroy_process_group``, and leaving the process without interpreter
finalisation (:func:`end_process`). The last step is what keeps gloo from aborting at exit: the
DistributedDataParallel reducer keeps the gloo backend, and so its worker threads, alive past
``destroy_process_group``; a worker that is still releasing the tensors of a finished collective
when the interpreter finalises needs the GIL, which a finalising interpreter refuses by ending
the thread inside a C++ destructor: ``terminate called without an active exception`` and
SIGABRT, after the run's work is done (seen about once in seven runs on a loaded CPU).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mgll_loss.distributed import World

from .errors import ExampleError


@dataclass(frozen=True)
class TrainingWorld(World):
    """:class:`mgll_loss.distributed.World` (``rank``, ``world_size``) with this process's device, and the
    collectives the training loop needs."""

    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_world(device: str | None) -> TrainingWorld:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; pick the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as error:
        raise ExampleError(f"--device {device}: not a device name (cpu, cuda, cuda:1, ...): {error}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ExampleError(f"--device {device}: no CUDA device is available here (torch.cuda.is_available() is False)")
    if size == 1:
        return TrainingWorld(0, 1, chosen)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return TrainingWorld(dist.get_rank(), size, chosen)


def close_world(world: TrainingWorld) -> None:
    """Destroy the process group (after :meth:`TrainingWorld.barrier` on success: no rank is left in a collective)."""
    if world.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> int:
    """Return ``code``; in a torchrun worker, flush the output and exit with it now, skipping finalisation.

    See the module docstring: gloo's worker threads may outlive the process group, and a thread that
    touches Python objects while the interpreter finalises aborts the process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
