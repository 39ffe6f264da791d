"""Random inputs shared by the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def unit_features(
    *shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, requires_grad: bool = False
) -> Tensor:
    """L2-normalised random features of ``shape`` (last dim is D), as a leaf tensor."""
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).to(dtype)
    return x.requires_grad_(requires_grad)


def class_ids(batch: int, num_classes: int, seed: int = 0) -> Tensor:
    """Random class ids [B] drawn from ``num_classes`` classes (duplicates when B > num_classes)."""
    return torch.randint(0, num_classes, (batch,), generator=torch.Generator().manual_seed(seed))


def multi_hot(batch: int, num_labels: int, seed: int = 0, p: float = 0.4) -> Tensor:
    """Random 0/1 labels [B, C] with an all-zero row and a duplicated row."""
    labels = (torch.rand(batch, num_labels, generator=torch.Generator().manual_seed(seed)) < p).long()
    if batch > 2:
        labels[0] = 0
        labels[2] = labels[1]
    return labels


def level_labels(batch: int, seed: int = 0) -> list[Tensor | None]:
    """Labels for three levels: coarse ids, multi-hot, none."""
    return [class_ids(batch, 2, seed), multi_hot(batch, 4, seed + 1), None]
