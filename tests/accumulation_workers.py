"""A tiny two-tower model, effective batches and the DDP worker for tests/test_accumulation.py.

The DDP worker (spawned with gloo on CPU, the pattern and ``finish_rank`` teardown of
tests/distributed_workers.py) runs one accumulated step of a DistributedDataParallel model on this
rank's micro-batches and saves the parameter gradients, the loss and how often DDP all-reduced.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from mgll_loss import MGLLLoss, accumulate_step

from .distributed_workers import D, G, TinyTwoTower, finish_rank, init_group, local_slice

IN_DIM = 7

#: Micro-batch sizes per rank in the DDP test (uneven, and a different number of micro-batches per rank).
RANK_SPLITS = [[3, 2], [1, 2, 2]]


class TwoTower(TinyTwoTower):
    """TinyTwoTower (learnable log scale and bias, float64) with two-layer towers, optionally with dropout."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__(IN_DIM)
        hidden = dict(dtype=torch.float64)
        self.image_tower = nn.Sequential(
            nn.Linear(IN_DIM, 8, **hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, D, **hidden)
        )
        self.text_tower = nn.Sequential(nn.Linear(IN_DIM, 8, **hidden), nn.Dropout(dropout), nn.Linear(8, D, **hidden))


def effective_batch(batch: int, seed: int = 0) -> dict[str, Any]:
    """Inputs of the two-tower model, labels of every kind (with duplicates) and a text mask for ``batch`` rows.

    The keys of distributed_workers.global_batch, so its ``local_slice`` cuts a rank's rows.
    """
    g = torch.Generator().manual_seed(seed)
    return dict(
        images=torch.randn(batch, IN_DIM, generator=g, dtype=torch.float64),
        texts=torch.randn(G, batch, IN_DIM, generator=g, dtype=torch.float64),
        labels=[torch.randint(0, 3, (batch,), generator=g), (torch.rand(batch, 4, generator=g) < 0.4).long(), None],
        targets=[None] * G,
        mask=torch.rand(G, batch, generator=g) > 0.2,
    )


def micro_batches(inputs: dict[str, Any], sizes: list[int], start: int = 0) -> list[dict[str, torch.Tensor]]:
    """Consecutive micro-batches of the model inputs, rows ``start``.. in chunks of ``sizes``."""
    batches = []
    for size in sizes:
        rows = slice(start, start + size)
        batches.append(dict(images=inputs["images"][rows], texts=inputs["texts"][:, rows]))
        start += size
    return batches


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def ddp_accumulation_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """One accumulated step per rank (its micro-batches of ``RANK_SPLITS``), counting DDP's all-reduces."""
    init_group(rank, world_size, store)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TwoTower())
    reductions: list[int] = []

    def counting_allreduce(state, bucket):  # no annotations: DDP checks them, and this module's are strings
        reductions.append(1)
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, counting_allreduce)
    inputs = effective_batch(sum(sum(sizes) for sizes in RANK_SPLITS))
    start = sum(sum(sizes) for sizes in RANK_SPLITS[:rank])
    local = local_slice(inputs, start, start + sum(RANK_SPLITS[rank]))
    loss_fn = MGLLLoss(local_loss=True, gather_with_grad=True)
    loss = accumulate_step(
        model, loss_fn, micro_batches(local, RANK_SPLITS[rank]), labels=local["labels"], text_mask=local["mask"]
    )
    finish_rank(
        dict(loss=loss, grads=gradients(model), reductions=len(reductions)),
        os.path.join(out_dir, f"accum_rank{rank}.pt"),
    )
