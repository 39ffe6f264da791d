"""From the arguments of a loss function to its terms: validate, build the inputs this process
computes (gathered across ranks when distributed), run the chosen backend, divide its sums by
their counts and weight them. :mod:`mgll_loss.functional` holds the public functions over this pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .backends import (
    LossInputs,
    LossTerms,
    TermWeights,
    batched_weighted_terms,
    check_backend,
    check_chunk_size,
    resolve_backend,
    resolve_backend_name,
)
from .distributed import World, raise_on_every_rank
from .global_batch import DistributedOptions, LocalInputs, build_problem, describe_levels
from .options import check_level_weights
from .reduction import Terms, terms_from_sums
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

__all__ = ["Prepared", "compute", "evaluate", "loss_output", "prepare", "requested"]


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


def evaluate(*args: Any, backend: str, chunk_size: int | None, distributed: DistributedOptions, **kwargs: Any) -> Terms:
    """:func:`prepare`, then :func:`compute` with every term weight 1."""
    prepared = prepare(*args, backend=backend, chunk_size=chunk_size, distributed=distributed, **kwargs)
    return compute(prepared, (1.0, 1.0, 1.0), backend, chunk_size, distributed.local_loss)


def compute(
    prepared: Prepared,
    term_weights: tuple[float, float, float],
    backend: str,
    chunk_size: int | None,
    local_loss: bool,
) -> Terms:
    """Run the backend on ``prepared`` and return its weighted terms (``term_weights``: a_1, a_2, a_3)."""
    problem, request, world = prepared.problem, prepared.request, prepared.world
    weights = TermWeights(*term_weights, levels=prepared.level_weights)
    # The backends pick their compute dtype (fp32 for fp16/bf16 inputs); autocast would run their
    # matmuls in low precision again (and mix dtypes in a hand-written backward), so it is off here.
    device = problem.image_features.device.type
    with torch.autocast(device, enabled=False) if _autocast_enabled(device) else nullcontext():
        name = resolve_backend_name(backend, problem)
        if name == "batched" and not (local_loss and world.is_distributed):  # counts of this process: in the node
            return batched_weighted_terms(problem, request, weights)
        sums = resolve_backend(name, problem)(problem, request, chunk_size)
        return terms_from_sums(sums, problem, request, weights, world, local_loss)


def _autocast_enabled(device: str) -> bool:
    """Whether autocast is on for ``device`` (entering a context to turn it off costs more than asking)."""
    try:
        return torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta") has no autocast to turn off
        return False


def loss_output(terms: Terms, problem: LossInputs, output_dict: bool) -> Tensor | dict[str, Tensor]:
    """The total of the terms, or with ``output_dict`` the terms by name (a zero where a term is off)."""
    present = [term for term in terms if term is not None]
    if not present:  # one level, only the smooth KL weighted: a zero in the graph, so that backward() runs
        anchor = (problem.image_features.sum() * 0.0 + 0.0).to(problem.compute_dtype)
        terms = (anchor, anchor, anchor)
        present = [anchor]
    if not output_dict:
        return sum(present[1:], present[0])
    zero = torch.zeros((), dtype=problem.compute_dtype, device=problem.image_features.device)
    names = ("soft_clip_loss", "pointwise_loss", "smooth_kl_loss")
    return {name: zero if term is None else term for name, term in zip(names, terms, strict=True)}


def _require_smooth_kl_levels(sizes: tuple[int, ...], name: str, hint: str = "") -> None:
    if len(sizes) < 2:
        raise ValueError(f"{name}: the smooth KL compares levels and needs G >= 2, got G={len(sizes)}")
    if len(set(sizes)) != 1:
        raise ValueError(
            f"{name}: the smooth KL needs the same number of texts N in every level, got N_g={list(sizes)}{hint}"
        )
