"""Assemble the :class:`LossInputs` a rank computes: local inputs, or every rank's rows.

With ``world_size > 1`` the features, labels, targets and text masks of all ranks are gathered
(features with gradient as configured; the rest without), and

- ``local_loss=False``: every rank computes the loss of the global batch. Gradients of the local
  rows are multiplied by ``world_size`` (by the gather's backward, or explicitly without
  ``gather_with_grad``) so that DDP's gradient average equals the single-process gradient.
- ``local_loss=True``: a rank computes its local rows against every column and its local
  columns against every row. :mod:`.reduction` divides by counts summed over ranks and multiplies by
  ``world_size``, so the ranks' losses average to the global loss. Needs ``gather_with_grad``:
  the other ranks' rows contribute to this rank's gradients only through the gather's backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .backends import LossInputs
from .distributed import World, all_gather_ints, gather_rows, resolve_world, scale_gradient
from .labels import PAD, LabelSets
from .options import check_flag
from .positives import LevelTargets, level_targets
from .validation import check_labels_or_targets, check_targets

__all__ = ["DistributedOptions", "LocalInputs", "build_problem", "describe_levels"]

_KIND_NONE, _KIND_IDS, _KIND_MULTI_HOT, _KIND_TARGETS, _KIND_LABEL_SETS = range(5)
_KIND_NAMES = ("None", "class ids", "multi-hot", "targets", "LabelSets")


@dataclass(frozen=True)
class DistributedOptions:
    """How a loss sees the other ranks (all no-ops in a single process).

    Attributes:
        local_loss: compute local rows/columns against the global batch instead of the whole
            global loss on every rank (less compute and memory per rank; same gradients).
        gather_with_grad: gather features through the autograd-aware all-gather.
        rank: this process's rank; None reads it from the default process group.
        world_size: number of ranks; None reads it from the default process group.
    """

    local_loss: bool = False
    gather_with_grad: bool = False
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        check_flag("local_loss", self.local_loss)
        check_flag("gather_with_grad", self.gather_with_grad)
        if self.local_loss and not self.gather_with_grad:
            raise ValueError(
                "local_loss=True needs gather_with_grad=True: without it, the terms other ranks compute "
                "for this rank's features never reach its gradients"
            )

    def world(self) -> World:
        """The resolved rank and world size."""
        return resolve_world(self.rank, self.world_size)


@dataclass(frozen=True)
class LocalInputs:
    """This process's validated inputs (labels and targets are checked by :func:`build_problem`).

    Attributes:
        image_features: [B, D].
        text_features: the levels' texts stacked along rows, [sum_g N_g, D].
        level_sizes: N_g per level.
        logit_scale, logit_bias: 0-dim tensors (bias may be None).
        labels, targets, text_masks: one entry (or None) per level.
        names: how level g's labels are named in error messages.
        match: comparison of multi-hot label sets.
        needs_positives: False for the smooth KL alone, where a level without labels needs no N == B.
    """

    image_features: Tensor
    text_features: Tensor
    level_sizes: tuple[int, ...]
    logit_scale: Tensor
    logit_bias: Tensor | None
    labels: tuple[Any, ...]
    targets: tuple[Any, ...]
    text_masks: tuple[Tensor | None, ...]
    names: tuple[str, ...]
    match: str
    needs_positives: bool

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 if a feature tensor is float64, else float32."""
        wide = torch.float64 in (self.image_features.dtype, self.text_features.dtype)
        return torch.float64 if wide else torch.float32

    def validated_targets(self, level: int, labels: Any, targets: Any, num_texts: int) -> LevelTargets:
        """Validate one level's local labels/targets against ``num_texts`` columns."""
        images = self.image_features
        if labels is None and targets is None and not self.needs_positives:
            return LevelTargets(images.shape[0], num_texts, match=self.match)
        return level_targets(
            labels,
            targets,
            num_images=images.shape[0],
            num_texts=num_texts,
            match=self.match,
            device=images.device,
            name=self.names[level],
        )


LevelKinds = tuple[list[int], list[int]]


def build_problem(
    inputs: LocalInputs, world: World, options: DistributedOptions, kinds: LevelKinds | None = None
) -> LossInputs:
    """Validate the per-level labels/targets and return the problem this rank computes.

    Across ranks, ``kinds`` is :func:`describe_levels` of ``inputs``, computed (and agreed on by
    every rank) before this call.
    """
    if world.is_distributed:
        return _gathered_problem(inputs, world, options, kinds if kinds is not None else describe_levels(inputs))
    batch = inputs.image_features.shape[0]
    return LossInputs(
        image_features=inputs.image_features,
        text_features=inputs.text_features,
        level_sizes=inputs.level_sizes,
        logit_scale=inputs.logit_scale,
        logit_bias=inputs.logit_bias,
        targets=tuple(
            inputs.validated_targets(g, y, t, n)
            for g, (y, t, n) in enumerate(zip(inputs.labels, inputs.targets, inputs.level_sizes, strict=True))
        ),
        text_masks=inputs.text_masks,
        compute_dtype=inputs.compute_dtype,
        row_range=slice(0, batch),
        column_ranges=tuple(slice(0, n) for n in inputs.level_sizes),
    )


def _gathered_problem(
    inputs: LocalInputs, world: World, options: DistributedOptions, description: LevelKinds
) -> LossInputs:
    image_features, text_features, level_sizes = inputs.image_features, inputs.text_features, inputs.level_sizes
    batch, levels = image_features.shape[0], len(level_sizes)
    kinds, widths = description
    layout = all_gather_ints([batch, *level_sizes, *kinds, *widths, *(int(m is not None) for m in inputs.text_masks)])
    _check_same_layout(layout, levels, kinds, inputs.names)
    batch_sizes = layout[:, 0].tolist()
    sizes_per_rank = layout[:, 1 : 1 + levels]
    global_sizes = tuple(int(n) for n in sizes_per_rank.sum(0))

    def gather(tensor: Tensor, sizes: list[int], with_grad: bool = False) -> Tensor:
        return gather_rows(tensor, sizes, world, with_grad=with_grad)

    grad_gather = options.gather_with_grad
    if not grad_gather:  # every rank computes the global loss; DDP averages: restore the sum over ranks
        image_features = scale_gradient(image_features, float(world.world_size))
        text_features = scale_gradient(text_features, float(world.world_size))
    images = gather(image_features, batch_sizes, grad_gather)
    local_levels = text_features.split(level_sizes)
    texts = torch.cat([gather(t, sizes_per_rank[:, g].tolist(), grad_gather) for g, t in enumerate(local_levels)])
    positives = []
    for g, (labels, targets) in enumerate(zip(inputs.labels, inputs.targets, strict=True)):
        if kinds[g] == _KIND_TARGETS and widths[g] != global_sizes[g]:  # the same verdict on every rank
            raise ValueError(
                f"{_targets_name(inputs.names[g])}: across ranks, expected shape [B_local, N_global] = "
                f"[{batch}, {global_sizes[g]}] (texts of every rank), got [{batch}, {widths[g]}]"
            )
        source = labels if labels is not None else targets
        if kinds[g] == _KIND_LABEL_SETS:  # ranks may hold different K: pad every rank to the longest
            width = int(layout[:, 1 + 2 * levels + g].max())
            source = F.pad(source.as_subclass(Tensor), (0, width - source.shape[1]), value=PAD)
        gathered = None if source is None else gather(source, batch_sizes)
        positives.append(_targets_from_gathered(kinds[g], gathered, sum(batch_sizes), global_sizes[g], inputs.match))
    masks = tuple(
        None if m is None else gather(m, sizes_per_rank[:, g].tolist()).to(torch.bool)
        for g, m in enumerate(inputs.text_masks)
    )
    row_start = sum(batch_sizes[: world.rank])
    column_starts = sizes_per_rank[: world.rank].sum(0).tolist()
    local = options.local_loss
    return LossInputs(
        image_features=images,
        text_features=texts,
        level_sizes=global_sizes,
        logit_scale=inputs.logit_scale,
        logit_bias=inputs.logit_bias,
        targets=tuple(positives),
        text_masks=masks,
        compute_dtype=inputs.compute_dtype,
        row_range=slice(row_start, row_start + batch) if local else slice(0, sum(batch_sizes)),
        column_ranges=tuple(
            slice(start, start + n) if local else slice(0, total)
            for start, n, total in zip(column_starts, level_sizes, global_sizes, strict=True)
        ),
    )


def _targets_name(labels_name: str) -> str:
    return labels_name.replace("labels", "targets")


def describe_levels(inputs: LocalInputs) -> LevelKinds:
    """Validate each level's local labels/targets; return each level's kind and width (C, or N_global for targets).

    Only local checks: run it on every rank before any collective (see
    :func:`~mgll_loss.distributed.raise_on_every_rank`).
    """
    kinds, widths = [], []
    for g, (y, t) in enumerate(zip(inputs.labels, inputs.targets, strict=True)):
        if t is not None:
            check_labels_or_targets(inputs.names[g], y, t)
            name = _targets_name(inputs.names[g])
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: expected a tensor of shape [B, N], got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{name}: expected shape [B, N] (N: texts of every rank), got {list(t.shape)}")
            check_targets(name, t, inputs.image_features.shape[0], t.shape[1], inputs.image_features)
            kinds.append(_KIND_TARGETS)
            widths.append(t.shape[1])
            continue
        inputs.validated_targets(g, y, None, inputs.level_sizes[g])
        if isinstance(y, LabelSets):
            kinds.append(_KIND_LABEL_SETS)
            widths.append(y.shape[1])
            continue
        kinds.append(_KIND_NONE if y is None else _KIND_IDS if y.dim() == 1 else _KIND_MULTI_HOT)
        widths.append(0 if y is None or y.dim() == 1 else y.shape[1])
    return kinds, widths


def _check_same_layout(layout: Tensor, levels: int, kinds: Sequence[int], names: Sequence[str]) -> None:
    """Every rank must give the same kind of labels (and label width, and mask presence) per level.

    Label sets may differ in K (they are padded); multi-hot columns must mean the same labels, so
    their C must agree. ``layout`` is the same on every rank, so every rank raises, or none.
    """
    per_level = layout[:, 1 + levels :].clone()
    per_level[:, levels : 2 * levels][:, [k == _KIND_LABEL_SETS for k in kinds]] = 0
    if bool((per_level == per_level[0]).all()):
        return
    found = [
        [
            _KIND_NAMES[int(k)] + (f" (width {int(w)})" if k in (_KIND_MULTI_HOT, _KIND_TARGETS) else "")
            for k, w in zip(row[:levels], row[levels : 2 * levels], strict=True)
        ]
        for row in layout[:, 1 + levels :]
    ]
    masks = layout[:, 1 + 3 * levels :].tolist()
    raise ValueError(
        f"labels/targets/text_mask: every rank must pass the same kind of labels per level (None, class ids, "
        f"LabelSets, multi-hot with the same C, or targets with the same N) and the same text-mask presence; got per "
        f"rank {found} with text masks {masks} for levels {list(names)}. Labels built per rank with "
        "level_labels_from_strings (no vocabulary) are consistent everywhere; multi-hot columns are not, "
        "unless every rank uses the same vocabulary"
    )


def _targets_from_gathered(
    kind: int, gathered: Tensor | None, num_images: int, num_texts: int, match: str
) -> LevelTargets:
    if kind == _KIND_TARGETS:
        return LevelTargets(num_images, num_texts, dense=gathered, match=match)
    if kind == _KIND_IDS:
        return LevelTargets(num_images, num_texts, class_ids=gathered, match=match)
    if kind == _KIND_MULTI_HOT:
        return LevelTargets(num_images, num_texts, multi_hot=gathered, match=match)
    if kind == _KIND_LABEL_SETS:
        return LevelTargets(num_images, num_texts, label_sets=gathered, match=match)
    return LevelTargets(num_images, num_texts, match=match)
