"""A tiny two-tower model, effective batches and the DDP worker for tests/test_accumulation.py.

The DDP worker (spawned with gloo on CPU, the pattern and ``_finish`` teardown of
tests/distributed_workers.py) runs one accumulated step of a DistributedDataParallel model on this
rank's micro-batches and saves the parameter gradients, the loss and how often DDP all-reduced.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from mgll_loss import MGLLLoss, accumulate_step

from .distributed_workers import _finish, _init

IN_DIM, D, G = 7, 5, 3

#: Micro-batch sizes per rank in the DDP test (uneven, and a different number of micro-batches per rank).
RANK_SPLITS = [[3, 2], [1, 2, 2]]


class TwoTower(nn.Module):
    """Linear towers (optionally with dropout) in float64, a learnable log scale and bias."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_tower = nn.Sequential(nn.Linear(IN_DIM, 8, dtype=torch.float64), nn.Tanh(), nn.Dropout(dropout),
                                         nn.Linear(8, D, dtype=torch.float64))
        self.text_tower = nn.Sequential(nn.Linear(IN_DIM, 8, dtype=torch.float64), nn.Dropout(dropout),
                                        nn.Linear(8, D, dtype=torch.float64))
        self.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(
            image_features=F.normalize(self.image_tower(images), dim=-1),
            text_features=F.normalize(self.text_tower(texts), dim=-1),
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )


def effective_batch(batch: int, seed: int = 0) -> Dict[str, Any]:
    """Inputs of the two-tower model and labels of every kind for ``batch`` rows, with duplicate labels."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        images=torch.randn(batch, IN_DIM, generator=g, dtype=torch.float64),
        texts=torch.randn(G, batch, IN_DIM, generator=g, dtype=torch.float64),
        labels=[torch.randint(0, 3, (batch,), generator=g), (torch.rand(batch, 4, generator=g) < 0.4).long(), None],
        text_mask=torch.rand(G, batch, generator=g) > 0.2,
    )


def micro_batches(inputs: Dict[str, Any], sizes: List[int], start: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Consecutive micro-batches of the model inputs, rows ``start``.. in chunks of ``sizes``."""
    batches = []
    for size in sizes:
        rows = slice(start, start + size)
        batches.append(dict(images=inputs["images"][rows], texts=inputs["texts"][:, rows]))
        start += size
    return batches


def rows_of(inputs: Dict[str, Any], start: int, stop: int) -> Dict[str, Any]:
    """The rows start..stop of every input (labels per level, the mask's columns)."""
    rows = slice(start, stop)
    return dict(images=inputs["images"][rows], texts=inputs["texts"][:, rows],
                labels=[None if y is None else y[rows] for y in inputs["labels"]], text_mask=inputs["text_mask"][:, rows])


def gradients(model: nn.Module) -> Dict[str, torch.Tensor]:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def ddp_accumulation_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """One accumulated step per rank (its micro-batches of ``RANK_SPLITS``), counting DDP's all-reduces."""
    _init(rank, world_size, store)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TwoTower())
    reductions: List[int] = []

    def counting_allreduce(state, bucket):  # no annotations: DDP checks them, and this module's are strings
        reductions.append(1)
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, counting_allreduce)
    inputs = effective_batch(sum(sum(sizes) for sizes in RANK_SPLITS))
    start = sum(sum(sizes) for sizes in RANK_SPLITS[:rank])
    local = rows_of(inputs, start, start + sum(RANK_SPLITS[rank]))
    loss_fn = MGLLLoss(local_loss=True, gather_with_grad=True)
    loss = accumulate_step(model, loss_fn, micro_batches(local, RANK_SPLITS[rank]), labels=local["labels"],
                           text_mask=local["text_mask"])
    _finish(dict(loss=loss, grads=gradients(model), reductions=len(reductions)), os.path.join(out_dir, f"accum_rank{rank}.pt"))
