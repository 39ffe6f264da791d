"""Missing texts (``--drop-texts P``): which texts of a batch are absent, and the CLIP baseline's joined captions.

The paper's robustness setting drops up to 30% of the granularity texts. Each step, each text of
each level is absent with probability ``P``; the draw depends only on the seed and the step (and the
sample's slot in the global batch), so a resumed run and the CLIP baseline see the same absences.
MGLL gets them as ``text_mask`` [G, B]; the CLIP baseline joins only the present parts of a
caption, and a sample with no text left leaves its loss like an MGLL column with no text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import Sample

__all__ = ["TextDropper", "joined_tokens", "text_mask"]

_STEP_STRIDE = 1_000_003


def text_mask(probability: float, seed: int, step: int, num_levels: int, batch_size: int, rank: int) -> Tensor:
    """bool [G, B]: True where a text is present, for this rank's slice of step ``step``'s global batch.

    Example:
        >>> mask = text_mask(0.3, seed=0, step=5, num_levels=3, batch_size=4, rank=0)
        >>> mask.shape, mask.dtype
        (torch.Size([3, 4]), torch.bool)
        >>> bool((text_mask(0.3, 0, 5, 3, 2, rank=1) == mask[:, 2:]).all())  # rank 1 holds slots 2, 3
        True
    """
    generator = torch.Generator().manual_seed(seed * _STEP_STRIDE + step)
    draws = torch.rand((rank + 1) * batch_size, num_levels, generator=generator)  # slot-major: a slot's draws
    return (draws[rank * batch_size :] >= probability).T.contiguous()  # do not depend on the number of slots


def joined_tokens(
    samples: Sequence[Sample], mask: Tensor, tokenizer: Callable[[Sequence[str]], Tensor], separator: str
) -> Tensor:
    """Token ids [1, B, L] of each sample's present texts joined by ``separator`` (an empty caption if none is)."""
    joined = [
        separator.join(text for text, present in zip(sample.texts, mask[:, i].tolist(), strict=True) if present)
        for i, sample in enumerate(samples)
    ]
    return tokenizer(joined).unsqueeze(0)


@dataclass
class TextDropper:
    """Per step: the batch's text tokens with this step's texts dropped, and the ``text_mask`` for the loss."""

    probability: float
    seed: int
    samples: Sequence[Sample]
    tokenizer: Callable[[Sequence[str]], Tensor]
    joined: bool  # the CLIP baseline: one caption of the present parts (``separator``-joined)
    separator: str

    def __call__(self, step: int, index: Tensor, tokens: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        """Token ids [G, B, L] (G = 1 when joined) and bool [G, B] (joined: [B], the samples with any text left)."""
        num_levels = len(self.samples[int(index[0])].texts)
        mask = text_mask(self.probability, self.seed, step, num_levels, len(index), rank)
        if not self.joined:
            return tokens, mask
        batch = [self.samples[i] for i in index.tolist()]
        return joined_tokens(batch, mask, self.tokenizer, self.separator), mask.any(dim=0)
