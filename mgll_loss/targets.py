"""Positive masks: which texts count as positives for which images.

A level's positive mask ``P`` has shape [B, N] (images x texts) and values in [0, 1]:

- no labels: the identity (text ``j`` is image ``j``'s only positive, plain CLIP);
- class ids ``y`` [B]: :math:`P_{ij} = [y_i = y_j]`;
- multi-hot labels ``Y`` [B, C], as label sets :math:`Y_i`, by ``match``:
  ``"exact"`` :math:`[Y_i = Y_j]`, ``"overlap"`` :math:`[Y_i \\cap Y_j \\neq \\emptyset]`,
  ``"jaccard"`` :math:`|Y_i \\cap Y_j| / |Y_i \\cup Y_j|`. Two empty label sets count as identical in
  every mode (exact and overlap give 1, jaccard gives 1), so an image is always its own text's positive;
- an explicit target matrix [B, N] (for instance images against a label-text vocabulary).

Duplicates in a batch are therefore positives, never false negatives. Backends never need the
whole matrix: :class:`LevelTargets` builds any tile ``P[rows, cols]`` on the fly.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .validation import MATCH_MODES, check_choice, check_labels, check_targets, check_text_mask

Index = Union[slice, Tensor]
"""Rows or columns of a mask: a slice with explicit start and stop, or an int64 index tensor."""

__all__ = [
    "Index",
    "LevelTargets",
    "level_targets",
    "positive_mask",
    "mask_from_class_ids",
    "mask_from_multi_hot",
    "labels_from_strings",
    "level_labels_from_strings",
]


class LevelTargets:
    """One level's positive mask, described by labels and built tile by tile.

    Args:
        num_images: the number of images (rows of the mask), B.
        num_texts: the number of texts (columns of the mask), N.
        class_ids: integer class ids [B] (N == B), or None.
        multi_hot: 0/1 labels [B, C] (N == B), or None.
        dense: explicit targets [B, N] with values in [0, 1], or None.
        match: how multi-hot label sets are compared: "exact", "overlap" or "jaccard".

    With all of ``class_ids``, ``multi_hot`` and ``dense`` None the mask is the identity.
    """

    def __init__(
        self,
        num_images: int,
        num_texts: int,
        *,
        class_ids: Optional[Tensor] = None,
        multi_hot: Optional[Tensor] = None,
        dense: Optional[Tensor] = None,
        match: str = "exact",
    ) -> None:
        self.num_images = num_images
        self.num_texts = num_texts
        self.class_ids = class_ids
        self.multi_hot = multi_hot
        self.dense = dense
        self.match = check_choice("match", match, MATCH_MODES)

    @property
    def is_identity(self) -> bool:
        """True when no labels or targets were given (plain CLIP positives)."""
        return self.class_ids is None and self.multi_hot is None and self.dense is None

    def tile(self, rows: Index, cols: Index, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Return ``P[rows, cols]`` as a ``dtype`` tensor.

        ``rows`` and ``cols`` are slices with explicit start and stop, or int64 index tensors.
        """
        if self.dense is not None:
            return self.dense[rows][:, cols].to(dtype)
        if self.class_ids is not None:
            return (self.class_ids[rows, None] == self.class_ids[None, cols]).to(dtype)
        if self.multi_hot is not None:
            return _match_label_sets(self.multi_hot[rows].to(dtype), self.multi_hot[cols].to(dtype), self.match)
        return (_positions(rows, device)[:, None] == _positions(cols, device)[None, :]).to(dtype)

    def keys(self, rows: Index, cols: Index, device: torch.device) -> Optional[Tuple[Tensor, Tensor]]:
        """Integer keys with ``P[rows, cols] = [row_key_i == col_key_j]``, or None when P is not of that form.

        Class ids are their own keys, the identity uses positions, and multi-hot labels under
        ``match="exact"`` use the index of their distinct label set. Overlap, Jaccard and dense
        targets have no keys.
        """
        if self.class_ids is not None:
            return self.class_ids[rows], self.class_ids[cols]
        if self.multi_hot is not None:
            if self.match != "exact":
                return None
            label_sets = torch.unique(self.multi_hot.to(torch.uint8), dim=0, return_inverse=True)[1]
            return label_sets[rows], label_sets[cols]
        if self.dense is not None:
            return None
        return _positions(rows, device), _positions(cols, device)

    def full(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Return the whole mask [B, N]."""
        return self.tile(slice(0, self.num_images), slice(0, self.num_texts), dtype, device)


def _positions(index: Index, device: torch.device) -> Tensor:
    """The integer positions an index selects: ``arange`` for a slice, the tensor itself otherwise."""
    if isinstance(index, slice):
        return torch.arange(index.start, index.stop, device=device)
    return index


def _match_label_sets(rows: Tensor, cols: Tensor, match: str) -> Tensor:
    """Compare label sets given as 0/1 float rows [R, C] and cols [K, C]; returns [R, K] in their dtype."""
    shared = rows @ cols.t()
    union = rows.sum(1)[:, None] + cols.sum(1)[None, :] - shared
    if match == "exact":
        return (shared == union).to(rows.dtype)
    if match == "overlap":
        return ((shared > 0) | (union == 0)).to(rows.dtype)
    return torch.where(union > 0, shared / union.clamp_min(1), torch.ones_like(shared))


def level_targets(
    labels: Optional[Tensor],
    targets: Optional[Tensor],
    *,
    num_images: int,
    num_texts: int,
    match: str = "exact",
    device: Optional[torch.device] = None,
    name: str = "labels",
) -> LevelTargets:
    """Validate one level's ``labels`` / ``targets`` and describe its positive mask.

    Args:
        labels: None, class ids [B] or multi-hot labels [B, C] (text j belongs to image j, N == B).
        targets: None or an explicit target matrix [B, N] with values in [0, 1].
        num_images: the number of images, B.
        num_texts: the number of texts, N.
        match: comparison of multi-hot label sets ("exact", "overlap", "jaccard").
        device: where the inputs must live; None: where the labels or targets are.
        name: how the argument is named in error messages (e.g. ``"labels[1]"``).
    """
    check_choice("match", match, MATCH_MODES)
    if device is None:
        source = labels if isinstance(labels, Tensor) else targets
        device = source.device if isinstance(source, Tensor) else None
    reference = torch.empty(0, device=device)
    if labels is not None and targets is not None:
        raise ValueError(f"{name}: give labels or an explicit targets matrix for a level, not both")
    if targets is not None:
        dense = check_targets(name.replace("labels", "targets"), targets, num_images, num_texts, reference)
        return LevelTargets(num_images, num_texts, dense=dense, match=match)
    if labels is not None:
        labels = check_labels(name, labels, num_images, num_texts, reference)
        if labels.dim() == 1:
            return LevelTargets(num_images, num_texts, class_ids=labels, match=match)
        return LevelTargets(num_images, num_texts, multi_hot=labels, match=match)
    if num_texts != num_images:
        raise ValueError(
            f"{name}: without labels or targets each image's positive is its own text, which needs N == B; "
            f"got N={num_texts} texts for B={num_images} images"
        )
    return LevelTargets(num_images, num_texts, match=match)


def positive_mask(
    labels: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
    *,
    num_images: int,
    num_texts: Optional[int] = None,
    match: str = "exact",
    text_mask: Optional[Tensor] = None,
) -> Tensor:
    """Build a level's positive mask ``P`` [B, N] (float32) from labels or explicit targets.

    Columns of absent texts (``text_mask[j]`` False) are zero.

    Example:
        >>> positive_mask(torch.tensor([0, 1, 0]), num_images=3)
        tensor([[1., 0., 1.],
                [0., 1., 0.],
                [1., 0., 1.]])
    """
    num_texts = num_images if num_texts is None else num_texts
    source = labels if labels is not None else targets
    device = source.device if isinstance(source, Tensor) else None
    mask = level_targets(labels, targets, num_images=num_images, num_texts=num_texts, match=match, device=device)
    full = mask.full(torch.float32, device if device is not None else torch.device("cpu"))
    if text_mask is not None:
        full = full * check_text_mask("text_mask", text_mask, num_texts, full)
    return full


def mask_from_class_ids(class_ids: Tensor) -> Tensor:
    """Positive mask [B, B] (float32) with :math:`P_{ij} = [y_i = y_j]` from class ids [B].

    Example:
        >>> mask_from_class_ids(torch.tensor([2, 2, 5]))
        tensor([[1., 1., 0.],
                [1., 1., 0.],
                [0., 0., 1.]])
    """
    if not isinstance(class_ids, Tensor):
        raise TypeError(f"class_ids: expected an integer tensor of shape [B], got {type(class_ids).__name__}")
    if class_ids.dim() != 1:
        raise ValueError(f"class_ids: expected an integer tensor of shape [B], got shape {list(class_ids.shape)}")
    return LevelTargets(len(class_ids), len(class_ids), class_ids=check_labels(
        "class_ids", class_ids, len(class_ids), len(class_ids), class_ids)).full(torch.float32, class_ids.device)


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


def labels_from_strings(
    texts: Sequence[str],
    separator: Optional[str] = None,
    vocabulary: Optional[Sequence[str]] = None,
) -> Tensor:
    """Turn a batch of label strings into class ids, or into multi-hot labels.

    Without ``separator`` each string is one class: returns int64 ids [B], numbered by
    ``vocabulary`` if given, else in order of first appearance. With ``separator`` each string
    is split into labels (parts stripped of whitespace, empty parts dropped): returns a bool
    multi-hot tensor [B, C].

    Args:
        texts: B strings, e.g. ``"Abnormal, Mild Non-Proliferative Diabetic Retinopathy"``.
        separator: splits multi-label strings, e.g. ``","``; None for one class per string.
        vocabulary: fixed class names (the ids are their positions); unknown names raise.

    Example:
        >>> labels_from_strings(["Normal", "Abnormal", "Normal"])
        tensor([0, 1, 0])
        >>> labels_from_strings(["Abnormal, DR", "Normal", "Abnormal, AMD"], separator=",")
        tensor([[ True,  True, False, False],
                [False, False,  True, False],
                [ True, False, False,  True]])
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
    if separator is not None and not isinstance(separator, str):
        raise TypeError(f"separator: expected a non-empty string or None, got {separator!r}")
    if separator == "":
        raise ValueError("separator: expected a non-empty string or None, got ''")
    if vocabulary is not None and (isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence)):
        raise TypeError(f"vocabulary: expected a sequence of strings or None, got {type(vocabulary).__name__}")
    groups: List[List[str]] = [
        [part.strip() for part in text.split(separator) if part.strip()] if separator else [text] for text in texts
    ]
    index: Dict[str, int] = {}
    if vocabulary is not None:
        index = {name: i for i, name in enumerate(vocabulary)}
    for i, group in enumerate(groups):
        for name in group:
            if name not in index:
                if vocabulary is not None:
                    raise ValueError(f"texts[{i}]: label {name!r} is not in the vocabulary")
                index[name] = len(index)
    if separator is None:
        return torch.tensor([index[group[0]] for group in groups], dtype=torch.long)
    multi_hot = torch.zeros(len(groups), len(index), dtype=torch.bool)
    for i, group in enumerate(groups):
        multi_hot[i, [index[name] for name in group]] = True
    return multi_hot


def level_labels_from_strings(
    levels: Sequence[Sequence[str]],
    separator: Union[None, str, Sequence[Optional[str]]] = None,
) -> List[Tensor]:
    """Apply :func:`labels_from_strings` to every level: G lists of B strings -> G label tensors.

    ``separator`` is one value for all levels or a sequence with one entry per level.

    Example:
        >>> ids, categories = level_labels_from_strings(
        ...     [["Normal", "Abnormal"], ["Healthy", "Abnormal, DR"]], separator=[None, ","])
        >>> ids
        tensor([0, 1])
    """
    if isinstance(levels, str) or not isinstance(levels, Sequence):
        raise TypeError(f"levels: expected a sequence of G sequences of strings, got {type(levels).__name__}")
    for g, level in enumerate(levels):
        if isinstance(level, str) or not isinstance(level, Sequence):
            raise TypeError(f"levels[{g}]: expected a sequence of strings, got {type(level).__name__}")
    if separator is None or isinstance(separator, str):
        separators: Sequence[Optional[str]] = [separator] * len(levels)
    elif not isinstance(separator, Sequence):
        raise TypeError(f"separator: expected a string, None, or one of those per level, got {separator!r}")
    else:
        separators = separator
        if len(separators) != len(levels):
            raise ValueError(f"separator: expected one entry per level (G={len(levels)}), got {len(separators)}")
    sizes = {len(level) for level in levels}
    if len(sizes) > 1:
        raise ValueError(f"levels: expected the same batch size B in every level, got sizes {[len(v) for v in levels]}")
    return [labels_from_strings(level, sep) for level, sep in zip(levels, separators)]
