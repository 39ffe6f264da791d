"""Scenarios and worker processes for tests/test_distributed.py (spawned with gloo on CPU).

Every scenario builds one global batch from a seed; rank r takes its slice of rows (and of
texts, labels, masks; explicit targets keep every global column). The tests compare the ranks'
results with a single process run on the global batch, all in float64.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mgll_loss import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss

D, G = 6, 3

SCENARIOS: list[dict[str, Any]] = [
    dict(name="ids_global_loss", loss="mgll", labels="ids", options=dict(gather_with_grad=True)),
    dict(name="ids_local_loss", loss="mgll", labels="ids", options=dict(local_loss=True, gather_with_grad=True)),
    dict(name="ids_global_no_grad_gather", loss="mgll", labels="ids", options=dict()),
    dict(
        name="multi_hot_jaccard_mask_uneven_local",
        loss="mgll",
        labels="multi_hot",
        mask=True,
        uneven=True,
        options=dict(local_loss=True, gather_with_grad=True, match="jaccard"),
    ),
    dict(
        name="multi_hot_overlap_mask_uneven_global",
        loss="mgll",
        labels="multi_hot",
        mask=True,
        uneven=True,
        options=dict(match="overlap"),
    ),
    dict(
        name="targets_rows_local",
        loss="mgll",
        labels="targets",
        uneven=True,
        options=dict(
            local_loss=True,
            gather_with_grad=True,
            normalization="rows",
            pointwise_target="row_normalized",
            kl_direction="from_mean",
            level_weights=[1.0, 0.5, 2.0],
        ),
    ),
    dict(
        name="soft_clip_local",
        loss="soft_clip",
        labels="ids",
        mask=True,
        uneven=True,
        options=dict(local_loss=True, gather_with_grad=True),
    ),
    dict(
        name="pointwise_local",
        loss="pointwise",
        labels="multi_hot",
        mask=True,
        options=dict(local_loss=True, gather_with_grad=True),
    ),
    dict(
        name="smooth_kl_local_mask",
        loss="smooth_kl",
        labels="none",
        mask=True,
        uneven=True,
        options=dict(local_loss=True, gather_with_grad=True),
    ),
    dict(
        name="ids_mask_uneven_local_chunked",
        loss="mgll",
        labels="ids",
        mask=True,
        uneven=True,
        options=dict(local_loss=True, gather_with_grad=True, backend="chunked", chunk_size=2),
    ),
    dict(
        name="unlabelled_ids_mask_uneven_local",
        loss="mgll",
        labels="unlabelled_ids",
        mask=True,
        uneven=True,
        options=dict(local_loss=True, gather_with_grad=True),
    ),
    dict(
        name="unlabelled_ids_uneven_global_chunked",
        loss="mgll",
        labels="unlabelled_ids",
        uneven=True,
        options=dict(gather_with_grad=True, backend="chunked", chunk_size=2),
    ),
    dict(
        name="multi_hot_jaccard_global_chunked",
        loss="mgll",
        labels="multi_hot",
        mask=True,
        options=dict(gather_with_grad=True, match="jaccard", backend="chunked", chunk_size=3),
    ),
]


def local_sizes(world_size: int, uneven: bool) -> list[int]:
    """Rows per rank: equal, or uneven like a last batch without drop_last."""
    return [5 - (r % 3) for r in range(world_size)] if uneven else [4] * world_size


def global_batch(scenario: dict[str, Any], batch: int, seed: int = 0) -> dict[str, Any]:
    """The global inputs of a scenario (float64), with duplicate labels across ranks."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, D, generator=g, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(G, batch, D, generator=g, dtype=torch.float64), dim=-1)
    kind = scenario["labels"]
    labels: list[torch.Tensor | None] = [None] * G
    targets: list[torch.Tensor | None] = [None] * G
    if kind == "ids":
        labels = [torch.randint(0, 3, (batch,), generator=g), None, torch.randint(0, 2, (batch,), generator=g)]
    elif kind == "unlabelled_ids":  # -1: unlabelled at that level (only the image's own text is positive)
        labels = [torch.randint(-1, 3, (batch,), generator=g), None, torch.randint(-1, 1, (batch,), generator=g)]
    elif kind == "multi_hot":
        labels = [(torch.rand(batch, 4, generator=g) < 0.4).long() for _ in range(G)]
    elif kind == "targets":
        dense = (torch.rand(batch, batch, generator=g, dtype=torch.float64) < 0.3).double()
        targets = [dense * torch.rand(batch, batch, generator=g, dtype=torch.float64), None, None]
    mask = None
    if scenario.get("mask"):
        mask = torch.rand(G, batch, generator=g) > 0.25
    return dict(images=images, texts=texts, labels=labels, targets=targets, mask=mask)


def build_loss(scenario: dict[str, Any], distributed: bool) -> nn.Module:
    options = dict(scenario["options"])
    if not distributed:
        options.pop("local_loss", None)
        options.pop("gather_with_grad", None)
    cls = {"mgll": MGLLLoss, "soft_clip": SoftCLIPLoss, "pointwise": PointwiseLoss, "smooth_kl": SmoothKLLoss}[
        scenario["loss"]
    ]
    allowed = {
        "mgll": None,
        "soft_clip": {"match"},
        "pointwise": {"match", "normalization", "pointwise_target"},
        "smooth_kl": {"kl_direction"},
    }[scenario["loss"]]
    if allowed is not None:
        allowed |= {"local_loss", "gather_with_grad", "backend", "chunk_size"}
    return cls(**{k: v for k, v in options.items() if allowed is None or k in allowed})


def run_loss(scenario: dict[str, Any], batch: dict[str, Any], loss: nn.Module) -> dict[str, torch.Tensor]:
    """Loss and gradients (features, log scale, bias) for ``batch`` (local or global)."""
    images = batch["images"].clone().requires_grad_(True)
    texts = batch["texts"].clone().requires_grad_(True)
    log_scale = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    single = scenario["loss"] in ("soft_clip", "pointwise")
    kwargs: dict[str, Any] = dict(
        labels=batch["labels"][0] if single else batch["labels"],
        text_mask=None if batch["mask"] is None else (batch["mask"][0] if single else batch["mask"]),
    )
    if scenario["loss"] != "smooth_kl":
        kwargs["targets"] = batch["targets"][0] if single else batch["targets"]
    value = loss(images, texts[0] if single else texts, log_scale.exp(), bias, **kwargs)
    value.backward()
    return dict(loss=value.detach(), images=images.grad, texts=texts.grad, log_scale=log_scale.grad, bias=bias.grad)


def local_slice(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    rows = slice(start, stop)
    return dict(
        images=batch["images"][rows],
        texts=batch["texts"][:, rows],
        labels=[None if y is None else y[rows] for y in batch["labels"]],
        targets=[None if t is None else t[rows] for t in batch["targets"]],  # [B_local, N_global]
        mask=None if batch["mask"] is None else batch["mask"][:, rows],
    )


def init_group(rank: int, world_size: int, store: str) -> None:
    """Join the gloo group through the file store ``store`` (shared by every worker module of the tests).

    A short timeout turns a hang (a rank left waiting in a collective) into a failure.
    """
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )


def finish_rank(results: dict[str, Any], path: str) -> None:
    """Save this rank's results, leave the group in step with the other ranks, and exit at once.

    ``os._exit`` skips interpreter finalisation: under load, gloo's worker threads torn down
    there can abort the process (``terminate called without an active exception``) after
    the test's work is done, which would fail the test for a reason outside this library.
    """
    torch.save(results, path)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def loss_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """Run every scenario on this rank's slice; save losses and gradients."""
    init_group(rank, world_size, store)
    results = {}
    for scenario in SCENARIOS:
        sizes = local_sizes(world_size, scenario.get("uneven", False))
        batch = global_batch(scenario, sum(sizes))
        start = sum(sizes[:rank])
        local = local_slice(batch, start, start + sizes[rank])
        results[scenario["name"]] = run_loss(scenario, local, build_loss(scenario, distributed=True))
    finish_rank(results, os.path.join(out_dir, f"rank{rank}.pt"))


class TinyTwoTower(nn.Module):
    """Linear image and text towers with a learnable log scale and bias."""

    def __init__(self, in_dim: int = 10) -> None:
        super().__init__()
        self.image_tower = nn.Linear(in_dim, D, dtype=torch.float64)
        self.text_tower = nn.Linear(in_dim, D, dtype=torch.float64)
        self.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(
            image_features=F.normalize(self.image_tower(images), dim=-1),
            text_features=F.normalize(self.text_tower(texts), dim=-1),
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )


def ddp_inputs(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        images=torch.randn(batch, 10, generator=g, dtype=torch.float64),
        texts=torch.randn(G, batch, 10, generator=g, dtype=torch.float64),
        labels=torch.randint(0, 3, (batch,), generator=g),
    )


def ddp_gradients(model: nn.Module, inputs: dict[str, torch.Tensor], loss: nn.Module) -> dict[str, torch.Tensor]:
    out = model(inputs["images"], inputs["texts"])
    loss(**out, labels=[inputs["labels"], None, inputs["labels"]]).backward()
    module = model.module if hasattr(model, "module") else model
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def ddp_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """Train step of a DistributedDataParallel two-tower model on this rank's rows; save parameter grads."""
    init_group(rank, world_size, store)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TinyTwoTower())
    sizes = local_sizes(world_size, uneven=True)
    inputs = ddp_inputs(sum(sizes))
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    local = dict(images=inputs["images"][rows], texts=inputs["texts"][:, rows], labels=inputs["labels"][rows])
    grads = ddp_gradients(model, local, MGLLLoss(local_loss=True, gather_with_grad=True))
    finish_rank(grads, os.path.join(out_dir, f"ddp_rank{rank}.pt"))


def failing_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """Rank 1 passes a bad target value, then a different number of levels; then every rank passes valid input."""
    init_group(rank, world_size, store)
    scenario = dict(name="targets", labels="targets", options=dict(local_loss=True, gather_with_grad=True))
    sizes = local_sizes(world_size, uneven=False)
    batch = global_batch(scenario, sum(sizes))
    local = local_slice(batch, sum(sizes[:rank]), sum(sizes[: rank + 1]))
    loss = MGLLLoss(local_loss=True, gather_with_grad=True)
    outcomes = {}
    bad_targets = [t.clone() if t is not None else None for t in local["targets"]]
    if rank == 1:
        bad_targets[0][0, 0] = 2.0
    levels = G - 1 if rank == 1 else G
    attempts = {
        "bad_value_on_rank_1": lambda: loss(local["images"], local["texts"], 10.0, targets=bad_targets),
        "levels_differ": lambda: loss(local["images"], local["texts"][:levels], 10.0),
        "valid_afterwards": lambda: loss(local["images"], local["texts"], 10.0, targets=local["targets"]),
    }
    for name, attempt in attempts.items():
        try:
            outcomes[name] = float(attempt())
        except ValueError as error:
            outcomes[name] = f"ValueError: {error}"
    finish_rank(outcomes, os.path.join(out_dir, f"failing_rank{rank}.pt"))


def adapter_gradients(world_size: int, rank: int | None = None) -> dict[str, torch.Tensor]:
    """Gradients of a tiny open_clip model through MultiGranularOpenCLIP: on the whole batch, or
    (with ``rank``) on this rank's rows with the adapter in DDP and the loss from open_clip flags."""
    from types import SimpleNamespace

    from mgll_loss.adapters.open_clip import MultiGranularOpenCLIP, create_loss

    from .adapter_models import tiny_open_clip

    torch.manual_seed(0)
    wrapper = MultiGranularOpenCLIP(tiny_open_clip(logit_bias=-5.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    batch = 3 * world_size
    images = torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64)
    texts = torch.randint(1, 400, (G, batch, 12), generator=g)
    labels = [torch.randint(0, 2, (batch,), generator=g), None, torch.randint(0, 3, (batch,), generator=g)]
    if rank is None:
        model, loss = wrapper, MGLLLoss()
    else:
        rows = slice(3 * rank, 3 * rank + 3)
        images, texts = images[rows], texts[:, rows]
        labels = [None if label is None else label[rows] for label in labels]
        model = nn.parallel.DistributedDataParallel(wrapper)
        loss = create_loss(SimpleNamespace(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size))
    loss(**model(images, texts), labels=labels).backward()
    return {name: p.grad.detach().clone() for name, p in wrapper.named_parameters()}


def adapter_ddp_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """One training step of the open_clip adapter in DDP on this rank's rows; save parameter grads."""
    init_group(rank, world_size, store)
    finish_rank(adapter_gradients(world_size, rank), os.path.join(out_dir, f"adapter_rank{rank}.pt"))
