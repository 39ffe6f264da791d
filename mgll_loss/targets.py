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
whole matrix: :class:`LevelTargets` builds any tile ``P[rows, cols]`` on the fly.

Labels from strings (:func:`labels_from_strings`, :func:`level_labels_from_strings`, defined in
:mod:`mgll_loss.labels`) mean the same on every rank and in every batch without a shared vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .labels import LabelSets, labels_from_strings, level_labels_from_strings
from .validation import (
    MATCH_MODES,
    check_choice,
    check_label_sets,
    check_labels,
    check_targets,
    check_text_mask,
    reject_label_strings,
)

Index = slice | Tensor
"""Rows or columns of a mask: a slice with explicit start and stop, or an int64 index tensor."""

__all__ = [
    "Index",
    "LabelSets",
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
        class_ids: integer class ids [B] (N == B; negative: unlabelled), or None.
        multi_hot: 0/1 labels [B, C] (N == B), or None.
        dense: explicit targets [B, N] with values in [0, 1], or None.
        match: how multi-hot label sets are compared: "exact", "overlap" or "jaccard".
        label_sets: label ids [B, K] padded with -1 (see :class:`~mgll_loss.labels.LabelSets`), or
            None; stored as ``multi_hot`` over the distinct ids they hold (sorted), so two processes
            holding the same label sets build the same mask, whatever their column order or K.

    With all of ``class_ids``, ``multi_hot``, ``label_sets`` and ``dense`` None the mask is the identity.
    """

    def __init__(
        self,
        num_images: int,
        num_texts: int,
        *,
        class_ids: Tensor | None = None,
        multi_hot: Tensor | None = None,
        dense: Tensor | None = None,
        match: str = "exact",
        label_sets: Tensor | None = None,
    ) -> None:
        self.num_images = num_images
        self.num_texts = num_texts
        self.class_ids = class_ids
        self.multi_hot = multi_hot if label_sets is None else multi_hot_from_label_sets(label_sets)
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
            return (_class_keys(self.class_ids, rows, device)[:, None] == _class_keys(self.class_ids, cols, device)).to(
                dtype
            )
        if self.multi_hot is not None:
            return _match_label_sets(self.multi_hot[rows].to(dtype), self.multi_hot[cols].to(dtype), self.match)
        return (_positions(rows, device)[:, None] == _positions(cols, device)[None, :]).to(dtype)

    def keys(self, rows: Index, cols: Index, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """Integer keys with ``P[rows, cols] = [row_key_i == col_key_j]``, or None when P is not of that form.

        Class ids are their own keys (an unlabelled row, id < 0, gets ``-1 - position``: a key of its
        own), the identity uses positions, and multi-hot labels under ``match="exact"`` use the
        index of their distinct label set. Overlap, Jaccard and dense targets have no keys.
        """
        if self.class_ids is not None:
            return _class_keys(self.class_ids, rows, device), _class_keys(self.class_ids, cols, device)
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


def _class_keys(class_ids: Tensor, index: Index, device: torch.device) -> Tensor:
    """Class ids of ``index``, with ``-1 - position`` for unlabelled ones (negative ids): equal keys mean positives."""
    ids = class_ids[index]
    return torch.where(ids >= 0, ids, -1 - _positions(index, device).to(ids.dtype))


def multi_hot_from_label_sets(label_sets: Tensor) -> Tensor:
    """Bool multi-hot [B, C] from label ids [B, K] padded with -1; column c is the c-th smallest distinct id.

    Row sets are preserved exactly (an all-padding row stays empty); C >= 1.

    Example:
        >>> multi_hot_from_label_sets(torch.tensor([[7, 3], [3, -1], [-1, -1]]))
        tensor([[ True,  True],
                [ True, False],
                [False, False]])
    """
    ids = label_sets.as_subclass(Tensor)
    present = ids >= 0
    distinct, column = torch.unique(ids[present], return_inverse=True)
    multi_hot = torch.zeros(ids.shape[0], max(distinct.shape[0], 1), dtype=torch.bool, device=ids.device)
    multi_hot[torch.nonzero(present)[:, 0], column] = True
    return multi_hot


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
    labels: Tensor | None,
    targets: Tensor | None,
    *,
    num_images: int,
    num_texts: int,
    match: str = "exact",
    device: torch.device | None = None,
    name: str = "labels",
) -> LevelTargets:
    """Validate one level's ``labels`` / ``targets`` and describe its positive mask.

    Args:
        labels: None, class ids [B] (negative: unlabelled), multi-hot labels [B, C] or
            :class:`~mgll_loss.labels.LabelSets` [B, K] (text j belongs to image j, N == B).
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
    if isinstance(labels, LabelSets):
        label_sets = check_label_sets(name, labels, num_images, num_texts, reference)
        return LevelTargets(num_images, num_texts, label_sets=label_sets, match=match)
    if labels is not None:
        reject_label_strings(name, labels)
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
    labels: Tensor | None = None,
    targets: Tensor | None = None,
    *,
    num_images: int,
    num_texts: int | None = None,
    match: str = "exact",
    text_mask: Tensor | None = None,
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
