"""Workers for tests/test_distributed_strings.py: every rank builds its labels from its own strings.

No vocabulary is shared: rank r calls ``level_labels_from_strings`` on its slice of the global
strings only, so ids and label sets are built per rank (as a user of open_clip_train or the HF
Trainer does per batch). The tests compare the ranks' losses and gradients with one process
holding the global batch, in float64.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from mgll_loss import MGLLLoss
from mgll_loss.targets import LabelSets, labels_from_strings, level_labels_from_strings

from .distributed_workers import finish_rank, init_group

D = 6

# Level 0: one class per string, written as people write them (case, spaces); "Glaucoma" and "Cataract"
# appear on one rank only. Level 1: comma-separated label sets in any order, some only on one rank, one empty.
CLASSES = ["Normal", "DR", " dr ", "Normal", "AMD", "Glaucoma", "normal", "DR", "AMD  ", "Cataract", "DR", "Normal"]
SETS = [
    "DR, AMD",
    "AMD,DR",
    "Drusen",
    "",
    "Microaneurysms, Haemorrhages",
    "Haemorrhages",
    "Drusen, AMD",
    "DR",
    "Haemorrhages,Microaneurysms",
    "Myopia, Drusen",
    "AMD",
    "dr, amd",
]
SEPARATORS = [None, ",", None]

SCENARIOS: list[dict[str, Any]] = [
    dict(name=f"{match}_{'local' if local else 'global'}_{backend}", match=match, local=local, backend=backend)
    for match in ("exact", "overlap", "jaccard")
    for local, backend in ((True, "dense"), (False, "chunked"))
]


def local_sizes(world_size: int) -> list[int]:
    """Uneven local batches (like a last batch without drop_last)."""
    return [5, 3, 4][:world_size]


def strings(batch: int) -> list[list[str]]:
    """G = 3 levels of B strings: class names, label sets, and free text (no labels)."""
    return [CLASSES[:batch], SETS[:batch], [f"caption {i}" for i in range(batch)]]


def features(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        images=F.normalize(torch.randn(batch, D, generator=g, dtype=torch.float64), dim=-1),
        texts=F.normalize(torch.randn(3, batch, D, generator=g, dtype=torch.float64), dim=-1),
    )


def labels_of(levels: list[list[str]]) -> list[Any]:
    """The labels a user builds from strings, here or on one rank: no vocabulary, case-insensitive."""
    labels: list[Any] = level_labels_from_strings(levels[:2], separator=SEPARATORS[:2], case_sensitive=False)
    return labels + [None]


def run(
    scenario: dict[str, Any], batch: dict[str, torch.Tensor], labels: list[Any], distributed: bool
) -> dict[str, Any]:
    """Loss and gradients of the features, log scale and bias."""
    options: dict[str, Any] = dict(match=scenario["match"], backend=scenario["backend"], chunk_size=2)
    if distributed:
        options.update(local_loss=scenario["local"], gather_with_grad=True)
    images = batch["images"].clone().requires_grad_(True)
    texts = batch["texts"].clone().requires_grad_(True)
    log_scale = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    value = MGLLLoss(**options)(images, texts, log_scale.exp(), bias, labels=labels)
    value.backward()
    return dict(loss=value.detach(), images=images.grad, texts=texts.grad, log_scale=log_scale.grad, bias=bias.grad)


def string_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    """Every scenario on this rank's rows, labels from this rank's strings only; plus the issue's example."""
    init_group(rank, world_size, store)
    sizes = local_sizes(world_size)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    batch = features(sum(sizes))
    local = dict(images=batch["images"][start:stop], texts=batch["texts"][:, start:stop])
    labels = labels_of([level[start:stop] for level in strings(sum(sizes))])
    results: dict[str, Any] = {s["name"]: run(s, local, labels, distributed=True) for s in SCENARIOS}
    results["issue_example"] = issue_example(rank, world_size)
    results["mismatch"] = mismatched_labels(rank, local, labels)
    finish_rank(results, os.path.join(out_dir, f"strings_rank{rank}.pt"))


ISSUE_LEVELS = [["Normal", "DR", "DR", "AMD"], ["Healthy", "Microaneurysms", "Haemorrhages", "Drusen"]]


def issue_inputs() -> dict[str, torch.Tensor]:
    """The features of the issue's example: seed 0, B = 4, G = 2, D = 8, float64."""
    torch.manual_seed(0)
    images = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    return dict(images=images, texts=F.normalize(torch.randn(2, 4, 8, dtype=torch.float64), dim=-1))


def issue_example(rank: int, world_size: int) -> float:
    """The issue's input: rank 0 holds images 0-1, rank 1 images 2-3, each labels its own strings."""
    if world_size != 2:
        return float("nan")
    inputs = issue_inputs()
    rows = slice(2 * rank, 2 * rank + 2)
    labels = level_labels_from_strings([level[rows] for level in ISSUE_LEVELS])
    loss = MGLLLoss(local_loss=True, gather_with_grad=True)
    return float(loss(inputs["images"][rows], inputs["texts"][:, rows], 10.0, labels=labels))


def mismatched_labels(rank: int, local: dict[str, torch.Tensor], labels: list[Any]) -> dict[str, str]:
    """Labels that cannot mean the same on every rank: every rank must raise, then a valid call must work."""
    batch = local["images"].shape[0]
    attempts = {
        # rank 0 passes label sets, the others a multi-hot tensor built from a per-rank vocabulary
        "kinds_differ": [labels[0], labels[1] if rank == 0 else torch.ones(batch, 2, dtype=torch.long), None],
        # multi-hot labels with a different C on every rank
        "widths_differ": [labels[0], torch.ones(batch, 2 + rank, dtype=torch.long), None],
        # class ids from strings on one rank, label sets on another
        "ids_and_sets": [
            labels[0],
            labels_from_strings(["x"] * batch) if rank == 0 else LabelSets.from_lists([["x"]] * batch),
            None,
        ],
        "valid_afterwards": labels,
    }
    outcomes = {}
    loss = MGLLLoss(local_loss=True, gather_with_grad=True)
    for name, attempt in attempts.items():
        try:
            outcomes[name] = f"{float(loss(local['images'], local['texts'], 10.0, labels=attempt)):.6f}"
        except ValueError as error:
            outcomes[name] = f"ValueError: {error}"
    return outcomes
