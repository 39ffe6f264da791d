"""Labels from strings that mean the same on every rank, in every batch and in every process.

A label string is first normalised (:func:`normalize_label`), then named by a stable hash of
its UTF-8 bytes (:func:`label_id`: BLAKE2b, 63 bits), so no vocabulary has to be shared
beforehand: two ranks, two batches or two runs that meet the same string give it the same id,
whatever else they hold. Class labels become these ids (int64 [B]); multi-label strings become
:class:`LabelSets`, the sets of their labels' ids, which the losses compare as sets under every
``match`` mode. Different strings get the same id with probability about ``n**2 / 2**64`` for
``n`` distinct strings (below 1e-7 for a million).

With a ``vocabulary`` the ids are positions in it instead (and multi-label strings give a
multi-hot tensor over it), as before: that also means the same everywhere, as long as every
rank uses the same vocabulary.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LabelSets", "label_id", "normalize_label", "labels_from_strings", "level_labels_from_strings"]

PAD = -1
"""Padding of :class:`LabelSets` rows (label ids are never negative)."""


def normalize_label(text: str, *, case_sensitive: bool = True) -> str:
    """The form of a label string that is hashed and compared.

    Exactly three things are normalised: the string is put in Unicode NFC form (composed accents),
    leading and trailing whitespace is removed and every inner run of whitespace (spaces, tabs,
    newlines) becomes one space; with ``case_sensitive=False`` the result is also case-folded
    (:meth:`str.casefold`). Punctuation is kept: ``"DR"`` and ``"D.R."`` stay different.

    Example:
        >>> normalize_label("  Normal,   Healthy ")
        'Normal, Healthy'
        >>> normalize_label("NORMAL", case_sensitive=False)
        'normal'
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    normalized = " ".join(unicodedata.normalize("NFC", text).split())
    return normalized if case_sensitive else normalized.casefold()


def label_id(text: str, *, case_sensitive: bool = True) -> int:
    """The class id of a label string: a stable 63-bit hash of its normalised form, in ``[0, 2**63)``.

    Unlike Python's ``hash``, it does not change between processes (``PYTHONHASHSEED``), runs or
    machines. Ids are never negative: a negative class id means "unlabelled" to the losses.

    Example:
        >>> label_id("Normal") == label_id(" Normal ") != label_id("normal")
        True
        >>> label_id("normal", case_sensitive=False) == label_id("NORMAL", case_sensitive=False)
        True
    """
    digest = hashlib.blake2b(normalize_label(text, case_sensitive=case_sensitive).encode("utf-8"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


class LabelSets(Tensor):
    """Multi-label labels as sets of label ids: an int64 tensor [B, K], rows padded with -1.

    Row i holds the distinct ids of image i's labels (in increasing order, then ``-1``
    padding); an all-padding row is the empty set. The losses compare the rows as sets (``match``
    "exact", "overlap" or "jaccard", like multi-hot labels), so nothing depends on column order,
    on K, or on a vocabulary: ranks with different K are gathered by padding. It is a
    ``torch.Tensor`` (``.to(device)``, slicing and ``torch.cat`` keep the type); build it with
    :func:`labels_from_strings` (``separator``), :meth:`from_lists`, or from ids of your own.

    The one label kind that reads the host: the losses count the distinct ids of the (gathered)
    batch to lay out multi-hot columns (``torch.unique``), a synchronisation per call on CUDA and
    a break of a ``torch.compile`` graph. Where that matters, give the level a vocabulary (a
    multi-hot tensor).

    Args:
        ids: int64 [B, K], every entry a label id >= 0 or -1 (padding).

    Example:
        >>> sets = LabelSets.from_lists([["DR", "AMD"], ["AMD", "DR"], []])
        >>> bool((sets[0] == sets[1]).all()), sets[2].tolist()
        (True, [-1, -1])
    """

    @staticmethod
    def __new__(cls, ids: Tensor) -> LabelSets:
        if not isinstance(ids, Tensor):
            raise TypeError(f"ids: expected an int64 tensor [B, K], got {type(ids).__name__}")
        if ids.dtype != torch.int64 or ids.dim() != 2:
            raise ValueError(f"ids: expected an int64 tensor [B, K], got dtype {ids.dtype} and shape {list(ids.shape)}")
        return torch.Tensor._make_subclass(cls, ids.as_subclass(Tensor).detach())

    @classmethod
    def from_lists(cls, groups: Sequence[Sequence[str]], *, case_sensitive: bool = True) -> LabelSets:
        """Label sets from B lists of label strings (each string one label, normalised and hashed)."""
        if isinstance(groups, str) or not isinstance(groups, Sequence):
            raise TypeError(f"groups: expected a sequence of sequences of strings, got {type(groups).__name__}")
        rows: list[list[int]] = []
        for i, group in enumerate(groups):
            if isinstance(group, str) or not isinstance(group, Sequence):
                raise TypeError(f"groups[{i}]: expected a sequence of label strings, got {type(group).__name__}")
            for text in group:
                if not isinstance(text, str):
                    raise TypeError(f"groups[{i}]: expected label strings, got {type(text).__name__}")
            rows.append(sorted({label_id(text, case_sensitive=case_sensitive) for text in group}))
        width = max((len(row) for row in rows), default=0)
        padded = [row + [PAD] * (width - len(row)) for row in rows]
        return cls(torch.tensor(padded, dtype=torch.int64) if rows else torch.empty(0, 0, dtype=torch.int64))

    def ids(self) -> Tensor:
        """The ids as a plain tensor [B, K]."""
        return self.as_subclass(Tensor)


def labels_from_strings(
    texts: Sequence[str],
    separator: str | None = None,
    vocabulary: Sequence[str] | None = None,
    *,
    case_sensitive: bool = True,
) -> Tensor:
    """Turn a batch of label strings into labels that mean the same on every rank and in every batch.

    Strings are compared after :func:`normalize_label` (NFC, whitespace collapsed and stripped,
    case-folded with ``case_sensitive=False``).

    - Without ``separator`` each string is one class: int64 ids [B], the :func:`label_id` of the
      string, or its position in ``vocabulary``.
    - With ``separator`` each string is split into labels (empty parts dropped): a
      :class:`LabelSets` [B, K], or with ``vocabulary`` a bool multi-hot tensor [B, len(vocabulary)].

    Keep the hashed ids int64: they use all 63 bits, so ``.int()`` or any narrower dtype wraps
    them, possibly to negative numbers, which the losses read as "unlabelled". An empty string is
    a class (or an empty label set) of its own, so every blank cell is a positive of every other
    blank cell; to mark a missing label instead, set its id to -1 (only the image's own text is
    then its positive), e.g. ``ids[blank] = -1``.

    Args:
        texts: B strings, e.g. ``"Abnormal, Mild Non-Proliferative Diabetic Retinopathy"``.
        separator: splits multi-label strings, e.g. ``","``; None for one class per string.
        vocabulary: optional fixed label names, numbered by position; a name not in it raises.
        case_sensitive: False matches labels whatever their case.

    Raises:
        TypeError: ``texts`` is not a sequence of strings.
        ValueError: an empty ``separator``, a label missing from ``vocabulary``, or a vocabulary
            with two names that normalise to the same string.

    Example:
        >>> ids = labels_from_strings(["Normal", "Abnormal", "Normal "])
        >>> bool(ids[0] == ids[2] != ids[1]), bool((ids >= 0).all())
        (True, True)
        >>> labels_from_strings(["Normal", "AMD"], vocabulary=["Normal", "DR", "AMD"])
        tensor([0, 2])
        >>> labels_from_strings(["Abnormal, DR", "Normal", "Abnormal,  AMD"], separator=",").shape
        torch.Size([3, 2])
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
    groups: list[list[str]] = [
        [part for part in text.split(separator) if normalize_label(part)] if separator else [text] for text in texts
    ]
    if vocabulary is None:
        if separator is None:
            return torch.tensor([label_id(text, case_sensitive=case_sensitive) for text in texts], dtype=torch.int64)
        return LabelSets.from_lists(groups, case_sensitive=case_sensitive)
    index = _vocabulary_index(vocabulary, case_sensitive)
    positions = [[_position(index, name, i, case_sensitive) for name in group] for i, group in enumerate(groups)]
    if separator is None:
        return torch.tensor([row[0] for row in positions], dtype=torch.int64)
    multi_hot = torch.zeros(len(groups), len(vocabulary), dtype=torch.bool)
    for i, row in enumerate(positions):
        multi_hot[i, row] = True
    return multi_hot


def _vocabulary_index(vocabulary: Sequence[str], case_sensitive: bool) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, name in enumerate(vocabulary):
        if not isinstance(name, str):
            raise TypeError(f"vocabulary[{position}]: expected a string, got {type(name).__name__}")
        key = normalize_label(name, case_sensitive=case_sensitive)
        if key in index:
            raise ValueError(
                f"vocabulary[{position}]: {name!r} normalises to {key!r}, already vocabulary[{index[key]}]"
            )
        index[key] = position
    return index


def _position(index: dict[str, int], name: str, row: int, case_sensitive: bool) -> int:
    key = normalize_label(name, case_sensitive=case_sensitive)
    if key not in index:
        raise ValueError(f"texts[{row}]: label {key!r} is not in the vocabulary")
    return index[key]


def check_level_strings(level: int, texts: Any) -> None:
    """Raise ``TypeError`` unless ``texts`` (``levels[level]``) is a sequence and not a single string."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"levels[{level}]: expected a sequence of strings, got {type(texts).__name__}")


def level_labels_from_strings(
    levels: Sequence[Sequence[str]],
    separator: None | str | Sequence[str | None] = None,
    *,
    case_sensitive: bool = True,
) -> list[Tensor]:
    """Apply :func:`labels_from_strings` to every level: G lists of B strings -> G label tensors.

    ``separator`` is one value for all levels or a sequence with one entry per level. Each rank
    may call it on its own strings: the labels mean the same on every rank (see the module docs).

    Example:
        >>> ids, categories = level_labels_from_strings(
        ...     [["Normal", "Abnormal"], ["Healthy", "Abnormal, DR"]], separator=[None, ","])
        >>> ids.dtype, type(categories).__name__
        (torch.int64, 'LabelSets')
    """
    if isinstance(levels, str) or not isinstance(levels, Sequence):
        raise TypeError(f"levels: expected a sequence of G sequences of strings, got {type(levels).__name__}")
    for g, level in enumerate(levels):
        check_level_strings(g, level)
    if separator is None or isinstance(separator, str):
        separators: Sequence[str | None] = [separator] * len(levels)
    elif not isinstance(separator, Sequence):
        raise TypeError(f"separator: expected a string, None, or one of those per level, got {separator!r}")
    else:
        separators = separator
        if len(separators) != len(levels):
            raise ValueError(f"separator: expected one entry per level (G={len(levels)}), got {len(separators)}")
    sizes = {len(level) for level in levels}
    if len(sizes) > 1:
        raise ValueError(f"levels: expected the same batch size B in every level, got sizes {[len(v) for v in levels]}")
    return [
        labels_from_strings(level, sep, case_sensitive=case_sensitive)
        for level, sep in zip(levels, separators, strict=True)
    ]
