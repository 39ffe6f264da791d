"""Zero-shot scores from prompts in the form a model was trained on (the fair baseline of the demo's comparison).

The class prompts of :mod:`.evaluate` are single-level texts (e.g. ``"Glaucoma"``). The plain CLIP
baseline never saw such a text: it trained on one caption of all levels joined. Here every class
``c`` of level ``g`` is scored by the training captions in the model's own form (per level for
MGLL, joined for CLIP) whose level-``g`` labels include ``c``: score(image, c) = the largest cosine
similarity between the image and one of those captions (a nearest-caption classifier); a class that
no training caption names scores -2 for every image (AUC 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import Dataset
from .pipeline import captions

__all__ = ["own_form_scores"]


def own_form_scores(
    model: nn.Module,
    tokenizer: Callable[[Sequence[str]], Tensor],
    image_x: Tensor,
    dataset: Dataset,
    level: int,
    joined: bool,
    device: torch.device,
    encode_texts: Callable[..., Tensor],
) -> np.ndarray:
    """Scores [n_images, C] for the classes of ``level`` (``joined``: the model trained on joined captions)."""
    spec, classes = dataset.levels[level], dataset.classes(level)
    forms = captions(dataset.train, joined)[0 if joined else level]
    members: dict[str, set] = {}
    for sample, caption in zip(dataset.train, forms, strict=True):
        members.setdefault(caption, set()).update(spec.labels(sample.texts[level]))
    unique: list[str] = sorted(members)
    similarity = (image_x @ encode_texts(model, tokenizer, unique, device).T).numpy()  # [n, captions]
    scores = np.full((len(image_x), len(classes)), -2.0)  # below any cosine: a class no training caption names ties
    for j, caption in enumerate(unique):
        for name in members[caption]:
            c = classes.index(name)
            scores[:, c] = np.maximum(scores[:, c], similarity[:, j])
    return scores
