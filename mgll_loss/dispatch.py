"""From the arguments of a loss function to its terms: validate, build the inputs this process
computes (gathered across ranks when distributed), run the chosen backend, divide its sums into
means and weight them. :mod:`mgll_loss.functional` holds the public functions over this pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .backends import LossInputs, LossTerms, check_backend, check_chunk_size, resolve_backend
from .distributed import World, raise_on_every_rank
from .global_batch import DistributedOptions, LocalInputs, build_problem, describe_levels
from .options import check_level_weights
from .reduction import LevelMeans, level_means
from .validation import (
    check_finite_features,
    check_image_features,
    check_level_first,
    check_multi_level_text,
    check_multi_level_text_mask,
    check_per_level,
    check_scalar,
    check_single_level_text,
    check_text_mask,
)

__all__ = ["Prepared", "compute", "evaluate", "prepare", "requested", "weighted_terms"]


def requested(value: Tensor | None, term: str) -> Tensor:
    """A term the request asked for; a backend that returned None for it is a bug, reported as one."""
    if value is None:
        raise RuntimeError(f"{term}: the backend returned no value for a requested term")
    return value


class Prepared(NamedTuple):
    """Validated inputs of one call: what this process computes, the terms, the ranks, the level weights."""

    problem: LossInputs
    request: LossTerms
    world: World
    level_weights: tuple[float, ...]


def prepare(
    image_features: Any,
    text_features: Any,
    logit_scale: Any,
    logit_bias: Any,
    labels: Any,
    targets: Any,
    text_mask: Any,
    *,
    single_level: bool,
    match: str,
    request: LossTerms,
    backend: str,
    chunk_size: int | None,
    distributed: DistributedOptions,
    kl_hint: str | None = None,
    level_weights: Sequence[float] | None = None,
) -> Prepared:
    """Validate the inputs and build the problem this process computes (gathering when distributed).

    ``kl_hint`` None means the smooth KL is required (G >= 2); a string means a single level
    quietly has no smooth KL, and the string ends the error for unequal N_g. Across ranks, every
    rank learns whether any rank's inputs failed validation before the first gather.
    """
    check_backend(backend)
    check_chunk_size(chunk_size)
    world = distributed.world()
    try:
        inputs, request, per_level = _validate(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            labels,
            targets,
            text_mask,
            single_level=single_level,
            match=match,
            request=request,
            kl_hint=kl_hint,
            level_weights=level_weights,
        )
        kinds = describe_levels(inputs) if world.is_distributed else None
    except (TypeError, ValueError) as error:
        if world.is_distributed:
            raise_on_every_rank(error, -1)
        raise
    if world.is_distributed:
        raise_on_every_rank(None, len(inputs.level_sizes))
    return Prepared(build_problem(inputs, world, distributed, kinds), request, world, per_level)


def _validate(
    image_features: Any,
    text_features: Any,
    logit_scale: Any,
    logit_bias: Any,
    labels: Any,
    targets: Any,
    text_mask: Any,
    *,
    single_level: bool,
    match: str,
    request: LossTerms,
    kl_hint: str | None,
    level_weights: Sequence[float] | None,
) -> tuple[LocalInputs, LossTerms, tuple[float, ...]]:
    """Local checks only (no collective): the inputs, the request adjusted to G, the level weights."""
    image_features = check_image_features(image_features)
    if single_level:
        stacked = check_single_level_text(text_features, image_features)
        sizes: tuple[int, ...] = (stacked.shape[0],)
        masks: tuple[Tensor | None, ...] = (
            None if text_mask is None else check_text_mask("text_mask", text_mask, sizes[0], image_features),
        )
        labels, targets = (labels,), (targets,)
        names: tuple[str, ...] = ("labels",)
    else:
        stacked, sizes = check_multi_level_text(text_features, image_features)
        check_level_first(text_features, image_features, targets, request.soft_clip or request.pointwise)
        masks = check_multi_level_text_mask(text_mask, sizes, image_features)
        labels = check_per_level("labels", labels, len(sizes))
        targets = check_per_level("targets", targets, len(sizes))
        names = tuple(f"labels[{g}]" for g in range(len(sizes)))
    check_finite_features(image_features, text_features, stacked)
    per_level = (1.0,) if single_level else check_level_weights(level_weights, len(sizes))
    if request.smooth_kl:
        if len(sizes) == 1 and kl_hint is not None:
            request = replace(request, smooth_kl=False)
        else:
            _require_smooth_kl_levels(sizes, "text_features", kl_hint or "")
    scale = check_scalar("logit_scale", logit_scale, image_features, positive=True)
    bias = None if logit_bias is None else check_scalar("logit_bias", logit_bias, image_features)
    inputs = LocalInputs(
        image_features,
        stacked,
        sizes,
        scale,
        bias,
        tuple(labels),
        tuple(targets),
        tuple(masks),
        names,
        match,
        needs_positives=request.soft_clip or request.pointwise,
    )
    return inputs, request, per_level


def evaluate(
    *args: Any, backend: str, chunk_size: int | None, distributed: DistributedOptions, **kwargs: Any
) -> LevelMeans:
    """:func:`prepare`, then run the backend and normalise its sums into means."""
    prepared = prepare(*args, backend=backend, chunk_size=chunk_size, distributed=distributed, **kwargs)
    return compute(prepared, backend, chunk_size, distributed.local_loss)


def compute(prepared: Prepared, backend: str, chunk_size: int | None, local_loss: bool) -> LevelMeans:
    problem, request = prepared.problem, prepared.request
    # The backends pick their compute dtype (fp32 for fp16/bf16 inputs); autocast would run their
    # matmuls in low precision again (and mix dtypes in a hand-written backward), so it is off here.
    device = problem.image_features.device.type
    with torch.autocast(device, enabled=False) if _autocast_enabled(device) else nullcontext():
        sums = resolve_backend(backend, problem)(problem, request, chunk_size)
        return level_means(sums, problem, request, prepared.world, local_loss)


def _autocast_enabled(device: str) -> bool:
    """Whether autocast is on for ``device`` (entering a context to turn it off costs more than asking)."""
    try:
        return torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta") has no autocast to turn off
        return False
    except TypeError:  # torch < 2.4: no device argument
        if device == "cuda":
            return torch.is_autocast_enabled()
        return torch.is_autocast_cpu_enabled() if device == "cpu" else True


def weighted_terms(
    means: LevelMeans, weights: dict[str, float], per_level: tuple[float, ...], problem: LossInputs
) -> dict[str, Tensor]:
    def zero() -> Tensor:
        return torch.zeros((), dtype=problem.compute_dtype, device=problem.image_features.device)

    def weighted_sum(per_level_means: Tensor | None) -> Tensor | None:
        if per_level_means is None:
            return None
        if len(set(per_level)) == 1:  # Python weights: no host-to-device copy of a weight tensor
            return _times(per_level[0], per_level_means.sum())
        return sum((w * level for w, level in zip(per_level, per_level_means.unbind(0), strict=True)), zero())

    values = {
        "soft_clip_loss": weighted_sum(means.soft_clip),
        "pointwise_loss": weighted_sum(means.pointwise),
        "smooth_kl_loss": means.smooth_kl,
    }
    if all(value is None for value in values.values()):  # one level, only the smooth KL weighted: a zero in the graph
        anchor = (problem.image_features.sum() * 0.0 + 0.0).to(problem.compute_dtype)  # so that backward() runs
        return dict.fromkeys(values, anchor)
    return {name: zero() if value is None else _times(weights[name], value) for name, value in values.items()}


def _times(weight: float, value: Tensor) -> Tensor:
    """``weight * value``, without an operator for a weight of 1."""
    return value if weight == 1.0 else weight * value


def _require_smooth_kl_levels(sizes: tuple[int, ...], name: str, hint: str = "") -> None:
    if len(sizes) < 2:
        raise ValueError(f"{name}: the smooth KL compares levels and needs G >= 2, got G={len(sizes)}")
    if len(set(sizes)) != 1:
        raise ValueError(
            f"{name}: the smooth KL needs the same number of texts N in every level, got N_g={list(sizes)}{hint}"
        )
