"""One level's positive mask, described by its labels and built tile by tile (what the backends read).

:class:`LevelTargets` holds a level's validated class ids, multi-hot labels, label sets or explicit
targets, and builds any tile ``P[rows, cols]`` on the fly, so that no backend needs the whole
[B, N] matrix; :func:`level_targets` validates a level's inputs and describes its mask. The masks
themselves are defined in :mod:`mgll_loss.targets`, whose public builders use this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .labels import LabelSets
from .options import MATCH_MODES, check_choice
from .validation import check_label_sets, check_labels, check_labels_or_targets, check_targets, reject_label_strings

__all__ = ["Index", "LevelTargets", "dense_keys", "label_set_keys", "level_targets", "multi_hot_from_label_sets"]

Index = slice | Tensor
"""Rows or columns of a mask: a slice with explicit start and stop, or an int64 index tensor."""


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
            label_sets = label_set_keys(self.multi_hot)
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


def dense_keys(keys: Tensor) -> Tensor:
    """``keys`` [m] (any int64 values) renumbered into ``range(m)``: equal keys get equal numbers.

    A sort and a cumulative sum, so the result's shape depends only on ``keys``' shape (``torch.unique``
    would read the number of distinct keys on the host).

    Example:
        >>> dense_keys(torch.tensor([40, -3, 40, 7]))
        tensor([2, 0, 2, 1])
    """
    ordered, order = torch.sort(keys, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(keys).scatter_(0, order, torch.cumsum(starts, 0) - 1)


_WORD_BITS = 62  # labels packed per int64 key word (2**61 is the largest weight: no overflow in the sum)


def label_set_keys(multi_hot: Tensor) -> Tensor:
    """int64 keys [B] of the rows of 0/1 labels [B, C]: equal keys exactly for identical label sets.

    The labels are packed into 62-bit words; more than one word is combined by renumbering
    (sorts), so every shape depends only on the input's shape (no ``torch.unique``, no host read).

    Example:
        >>> keys = label_set_keys(torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]))
        >>> bool(keys[0] == keys[2]), bool(keys[0] == keys[1])
        (True, False)
    """
    rows, width = multi_hot.shape
    words = max(1, -(-width // _WORD_BITS))
    bits = F.pad((multi_hot != 0).long(), (0, words * _WORD_BITS - width)).view(rows, words, _WORD_BITS)
    weights = torch.pow(2, torch.arange(_WORD_BITS, device=multi_hot.device))
    packed = (bits * weights).sum(-1)  # [B, words]
    keys = packed[:, 0]
    for word in range(1, words):  # lexicographic: (rank so far, next word) -> rank
        keys = dense_keys(dense_keys(keys) * rows + dense_keys(packed[:, word]))
    return keys


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
    source = targets if isinstance(targets, Tensor) else labels
    if isinstance(source, Tensor) and (device is None or source.device == device):
        reference = source  # already where it must be: the device checks below pass without a new tensor
    else:
        reference = torch.empty(0, device=device)
    check_labels_or_targets(name, labels, targets)
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
            f"{name.replace('labels', 'text_features')}: without labels or targets each image's positive is its "
            f"own text, which needs N == B; got N={num_texts} texts for B={num_images} images (targets [B, N] say "
            "which texts are whose)"
        )
    return LevelTargets(num_images, num_texts, match=match)
