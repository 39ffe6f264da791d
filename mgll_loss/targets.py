"""Positive masks: which texts count as positives for which images.

A level's positive mask ``P`` has shape [B, N] (images x texts) and values in [0, 1]:

- no labels: the identity (text ``j`` is image ``j``'s only positive, plain CLIP);
- class ids ``y`` [B]: :math:`P_{ij} = [y_i = y_j]`; a negative id means "unlabelled at this
  level": that image's only positive is its own text (:math:`P_{ij} = [i = j]` on its row and column);
- multi-hot labels ``Y`` [B, C], or :class:`~mgll_loss.labels.LabelSets` [B, K], as label sets
  :math:`Y_i`, by ``match``:
  ``"exact"`` :math:`[Y_i = Y_j]`, ``"overlap"`` :math:`[Y_i \\cap Y_j \\neq \\emptyset]`,
  ``"jaccard"`` :math:`|Y_i \\cap Y_j| / |Y_i \\cup Y_j|`. Two empty label sets count as identical in
  every mode (exact and overlap give 1, jaccard gives 1), so an image is always its own text's positive;
- an explicit target matrix [B, N] (for instance images against a label-text vocabulary).

Duplicates in a batch are therefore positives, never false negatives. Backends never need the
whole matrix: they build tiles of it on the fly (:mod:`mgll_loss.positives`).

Labels from strings (:func:`labels_from_strings`, :func:`level_labels_from_strings`, defined in
:mod:`mgll_loss.labels`) mean the same on every rank and in every batch without a shared vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .labels import LabelSets, labels_from_strings, level_labels_from_strings
from .positives import LevelTargets, level_targets
from .validation import check_labels, check_text_mask

__all__ = [
    "LabelSets",
    "positive_mask",
    "mask_from_class_ids",
    "mask_from_multi_hot",
    "labels_from_strings",
    "level_labels_from_strings",
]


def positive_mask(
    labels: Tensor | None = None,
    targets: Tensor | None = None,
    *,
    num_images: int | None = None,
    num_texts: int | None = None,
    match: str = "exact",
    text_mask: Tensor | None = None,
) -> Tensor:
    """Build a level's positive mask ``P`` [B, N] (float32) from labels or explicit targets.

    Columns of absent texts (``text_mask[j]`` False) are zero.

    Args:
        labels: None, class ids [B], multi-hot labels [B, C] or :class:`~mgll_loss.labels.LabelSets`
            [B, K] (text j belongs to image j, so N == B).
        targets: None or an explicit target matrix [B, N] with values in [0, 1].
        num_images: B. Optional: taken from ``labels`` or ``targets`` (dim 0), or from ``text_mask``
            when neither is given (the identity mask); where given it must agree with them.
        num_texts: N. Optional: ``targets.shape[1]``, else ``text_mask``'s length, else B.
        match: how multi-hot label sets compare: ``"exact"``, ``"overlap"`` or ``"jaccard"``.
        text_mask: None or a boolean tensor [N] (True = text present).

    Shape:
        - Output: [B, N], float32, on the device of ``labels`` / ``targets`` (CPU for the identity).

    Raises:
        ValueError: when no input gives B (no labels, targets, text_mask nor ``num_images``), or the
            sizes disagree; the checks of :func:`mgll_loss.functional.soft_clip_loss` otherwise.

    Example:
        >>> positive_mask(torch.tensor([0, 1, 0]))
        tensor([[1., 0., 1.],
                [0., 1., 0.],
                [1., 0., 1.]])
        >>> positive_mask(num_images=2)
        tensor([[1., 0.],
                [0., 1.]])
    """
    for name, size in (("num_images", num_images), ("num_texts", num_texts)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{name}: expected a positive int or None, got {size!r}")
    source = labels if labels is not None else targets
    mask_size = text_mask.shape[0] if isinstance(text_mask, Tensor) and text_mask.dim() == 1 else None
    if num_images is None:
        num_images = _batch_size("labels" if labels is not None else "targets", source, mask_size)
    if num_texts is None:
        if isinstance(targets, Tensor) and targets.dim() == 2:
            num_texts = targets.shape[1]
        else:
            num_texts = mask_size if labels is None and mask_size is not None else num_images
    if source is None and num_texts != num_images:
        raise ValueError(
            f"num_texts: without labels or targets the mask is the identity, which needs num_texts == num_images, "
            f"got num_texts={num_texts} and num_images={num_images}; pass targets [B, N] for other pairs"
        )
    device = source.device if isinstance(source, Tensor) else None
    mask = level_targets(labels, targets, num_images=num_images, num_texts=num_texts, match=match, device=device)
    full = mask.full(torch.float32, device if device is not None else torch.device("cpu"))
    if text_mask is not None:
        full = full * check_text_mask("text_mask", text_mask, num_texts, full)
    return full


def _batch_size(name: str, source: object, mask_size: int | None) -> int:
    """B for :func:`positive_mask` from its labels or targets (dim 0), else from the text mask."""
    if isinstance(source, Tensor) and source.dim() >= 1:
        return source.shape[0]
    if source is None and mask_size is not None:
        return mask_size
    if source is None:
        raise ValueError(
            "num_images: expected an int when no labels, targets or text_mask are given (the identity mask [B, B] "
            "needs B), got None"
        )
    if not isinstance(source, Tensor):
        raise TypeError(
            f"{name}: expected a tensor (class ids [B], multi-hot [B, C] or targets [B, N]), got "
            f"{type(source).__name__}"
        )
    raise ValueError(
        f"num_images: cannot be read from {name} of shape []; pass num_images=B or {name} with a batch dim"
    )


def mask_from_class_ids(class_ids: Tensor) -> Tensor:
    """Positive mask [B, B] (float32) with :math:`P_{ij} = [y_i = y_j]` from class ids [B].

    A negative id marks an image unlabelled at this level: its only positive is its own text.

    Example:
        >>> mask_from_class_ids(torch.tensor([2, 2, 5, -1, -1]))
        tensor([[1., 1., 0., 0., 0.],
                [1., 1., 0., 0., 0.],
                [0., 0., 1., 0., 0.],
                [0., 0., 0., 1., 0.],
                [0., 0., 0., 0., 1.]])
    """
    if not isinstance(class_ids, Tensor):
        raise TypeError(f"class_ids: expected an integer tensor of shape [B], got {type(class_ids).__name__}")
    if class_ids.dim() != 1:
        raise ValueError(f"class_ids: expected an integer tensor of shape [B], got shape {list(class_ids.shape)}")
    return LevelTargets(
        len(class_ids),
        len(class_ids),
        class_ids=check_labels("class_ids", class_ids, len(class_ids), len(class_ids), class_ids),
    ).full(torch.float32, class_ids.device)


def mask_from_multi_hot(multi_hot: Tensor, match: str = "exact") -> Tensor:
    """Positive mask [B, B] (float32) from multi-hot labels [B, C] compared by ``match``.

    Example:
        >>> labels = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
        >>> mask_from_multi_hot(labels, match="jaccard")
        tensor([[1.0000, 0.5000, 0.0000],
                [0.5000, 1.0000, 0.0000],
                [0.0000, 0.0000, 1.0000]])
    """
    if not isinstance(multi_hot, Tensor):
        raise TypeError(f"multi_hot: expected a 0/1 tensor of shape [B, C], got {type(multi_hot).__name__}")
    if multi_hot.dim() != 2:
        raise ValueError(f"multi_hot: expected a 0/1 tensor of shape [B, C], got shape {list(multi_hot.shape)}")
    batch = multi_hot.shape[0]
    labels = check_labels("multi_hot", multi_hot, batch, batch, multi_hot)
    return LevelTargets(batch, batch, multi_hot=labels, match=match).full(torch.float32, multi_hot.device)
