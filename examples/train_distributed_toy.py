"""Multi-process MGLL training on a toy two-tower model, launched with torchrun.

Runs on CPU (gloo) or GPUs (nccl); every rank draws its own shard of a synthetic batch whose
labels repeat across ranks, and the loss sees the global batch through ``local_loss`` /
``gather_with_grad``::

    torchrun --standalone --nproc_per_node 2 examples/train_distributed_toy.py --steps 20

The real pretraining examples (fundus, X-ray) use the same loss options.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mgll_loss import MGLLLoss
from mgll_loss.utils import clamp_logit_scale

LEVELS, CLASSES, IN_DIM, EMBED_DIM = 3, 4, 32, 16


class TwoTower(nn.Module):
    """Linear image and text towers with a learnable log logit scale and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.image_tower = nn.Linear(IN_DIM, EMBED_DIM)
        self.text_tower = nn.Linear(IN_DIM, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(2.66))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict:
        return dict(
            image_features=F.normalize(self.image_tower(images), dim=-1),
            text_features=F.normalize(self.text_tower(texts), dim=-1),
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )


def synthetic_shard(batch: int, rank: int, step: int, device: torch.device):
    """Images and G levels of texts generated from shared class prototypes, plus class ids per level."""
    prototypes = torch.randn(LEVELS + 1, CLASSES, IN_DIM, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1000 * step + rank)
    classes = torch.randint(0, CLASSES, (batch,), generator=g)
    images = prototypes[0, classes] + 0.5 * torch.randn(batch, IN_DIM, generator=g)
    texts = prototypes[1:, classes] + 0.1 * torch.randn(LEVELS, batch, IN_DIM, generator=g)
    coarse = (classes > 0).long()  # level 0: normal / abnormal
    labels = [coarse, classes, classes]
    return images.to(device), texts.to(device), [y.to(device) for y in labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)  # identical initial weights on every rank
    model = TwoTower().to(device)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # local_loss: each rank computes its rows/columns against the gathered global batch
    loss_fn = MGLLLoss(local_loss=distributed, gather_with_grad=distributed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        images, texts, labels = synthetic_shard(args.batch_size, rank, step, device)
        loss = loss_fn(**model(images, texts), labels=labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_logit_scale((model.module if distributed else model).logit_scale)
        if distributed:  # the ranks' losses average to the loss of the global batch
            dist.all_reduce(loss := loss.detach().clone())
            loss /= dist.get_world_size()
        if rank == 0:
            print(f"step {step:3d}  global-batch loss {loss.item():.4f}", flush=True)
    if distributed:
        # Leave in step, then exit without interpreter finalisation: DDP keeps gloo's worker threads alive
        # past destroy_process_group, and one still releasing a collective's tensors while the interpreter
        # finalises aborts the process (SIGABRT, "terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
