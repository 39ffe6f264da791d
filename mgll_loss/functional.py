"""The MGLL losses as pure functions (Li et al., "Boosting Medical Visual Understanding From
Multi-Granular Language Learning", ICLR 2026, arXiv:2511.15943).

Every function takes L2-normalised ``image_features`` [B, D], text features, and an already
exponentiated ``logit_scale`` ``s`` (plus an optional ``logit_bias`` ``b``), and forms the logits
:math:`z^g_{ij} = s \\langle v_i, t^g_j \\rangle + b`. Positives :math:`P^g` come from ``labels`` /
``targets`` (see :mod:`mgll_loss.targets`); ``text_mask`` drops absent texts. The computation runs
in float32 for float16/bfloat16/float32 inputs (float64 for float64 inputs) and returns a 0-dim
tensor of that dtype.
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
from .docstrings import shared_args
from .global_batch import DistributedOptions, LocalInputs, build_problem, describe_levels
from .reduction import LevelMeans, level_means
from .validation import (
    KL_DIRECTIONS,
    MATCH_MODES,
    NORMALIZATIONS,
    POINTWISE_TARGETS,
    check_choice,
    check_finite_features,
    check_image_features,
    check_level_first,
    check_level_weights,
    check_multi_level_text,
    check_multi_level_text_mask,
    check_per_level,
    check_scalar,
    check_single_level_text,
    check_text_mask,
    check_weight,
)

__all__ = ["soft_clip_loss", "pointwise_loss", "smooth_kl_loss", "mgll_loss"]

TextFeatures = Tensor | Sequence[Tensor]
PerLevel = Sequence[Tensor | None] | None


@shared_args
def soft_clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    labels: Tensor | None = None,
    targets: Tensor | None = None,
    text_mask: Tensor | None = None,
    match: str = "exact",
    backend: str = "auto",
    chunk_size: int | None = None,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Tensor:
    """Soft CLIP loss: symmetric cross-entropy against row/column-normalised positives (paper Eqs. 1-3).

    .. math::
        \\mathcal{L}_{sCLIP} = \\tfrac12 \\Big[\\operatorname{mean}_{i: \\sum_j P_{ij} > 0}
        \\operatorname{CE}(z_{i\\cdot}, P_{i\\cdot} / \\textstyle\\sum_j P_{ij})
        + \\operatorname{mean}_{j: \\sum_i P_{ij} > 0}
        \\operatorname{CE}(z_{\\cdot j}, P_{\\cdot j} / \\textstyle\\sum_i P_{ij})\\Big]

    with :math:`\\operatorname{CE}(z, w) = -\\sum_k w_k \\log \\operatorname{softmax}(z)_k`. Rows or
    columns with no positive are left out of their mean. With no labels this equals open_clip's
    ``ClipLoss``.

    Args:
        image_features: L2-normalised image embeddings.
        text_features: L2-normalised text embeddings (text j belongs to image j when N == B).
        logit_scale: exponentiated temperature ``s`` (a number or one-element tensor).
        logit_bias: optional additive bias ``b``.
        labels: class ids [B] (a negative id: unlabelled, only its own text is positive), multi-hot
            labels [B, C] or :class:`~mgll_loss.labels.LabelSets` [B, K] (e.g. from
            :func:`~mgll_loss.targets.labels_from_strings`, the same on every rank); None for plain
            CLIP positives.
        targets: explicit positives [B, N] in [0, 1] (instead of ``labels``).
        text_mask: bool [N], False for absent texts (their columns are dropped).
        %(match)s
        %(backend_options)s

    Shape:
        image_features [B, D], text_features [N, D]; returns a 0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(4, 8), dim=-1)
        >>> soft_clip_loss(images, texts, 10.0, labels=torch.tensor([0, 0, 1, 2])).shape
        torch.Size([])
    """
    check_choice("match", match, MATCH_MODES)
    request = LossTerms(soft_clip=True, pointwise=False, smooth_kl=False)
    means = _evaluate(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        labels,
        targets,
        text_mask,
        single_level=True,
        match=match,
        request=request,
        backend=backend,
        chunk_size=chunk_size,
        distributed=DistributedOptions(local_loss, gather_with_grad, rank, world_size),
    )
    return _requested(means.soft_clip, "soft_clip_loss")[0]


@shared_args
def pointwise_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    labels: Tensor | None = None,
    targets: Tensor | None = None,
    text_mask: Tensor | None = None,
    match: str = "exact",
    normalization: str = "pairs",
    pointwise_target: str = "mask",
    backend: str = "auto",
    chunk_size: int | None = None,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Tensor:
    """Point-wise loss: binary cross-entropy with logits on every image-text pair (paper Eq. 4).

    .. math::
        \\mathcal{L}_{P} = \\frac{1}{K} \\sum_{i,j} -\\big[y_{ij} \\log \\sigma(z_{ij})
        + (1 - y_{ij}) \\log(1 - \\sigma(z_{ij}))\\big]

    with :math:`y = P` (``pointwise_target="mask"``) or :math:`y = P / \\operatorname{rowsum}(P)`
    (``"row_normalized"``, the authors' released code), and :math:`K` the number of present pairs
    (``normalization="pairs"``, the default) or :math:`B` (``"rows"``: paper Eq. 4 as printed and
    SigLIP; with no labels and a bias this equals open_clip's ``SigLipLoss``).

    Args:
        image_features, text_features, logit_scale, logit_bias, labels, targets, text_mask, match:
            as in :func:`soft_clip_loss`.
        normalization: "pairs" | "rows".
        pointwise_target: "mask" | "row_normalized".
        %(backend_options)s

    Shape:
        image_features [B, D], text_features [N, D]; returns a 0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(4, 8), dim=-1)
        >>> bool(pointwise_loss(images, texts, 10.0, -10.0, normalization="rows") > 0)
        True
    """
    check_choice("match", match, MATCH_MODES)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("pointwise_target", pointwise_target, POINTWISE_TARGETS)
    request = LossTerms(
        soft_clip=False, pointwise=True, smooth_kl=False, normalization=normalization, pointwise_target=pointwise_target
    )
    means = _evaluate(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        labels,
        targets,
        text_mask,
        single_level=True,
        match=match,
        request=request,
        backend=backend,
        chunk_size=chunk_size,
        distributed=DistributedOptions(local_loss, gather_with_grad, rank, world_size),
    )
    return _requested(means.pointwise, "pointwise_loss")[0]


@shared_args
def smooth_kl_loss(
    image_features: Tensor,
    text_features: TextFeatures,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    labels: PerLevel = None,
    targets: PerLevel = None,
    text_mask: Tensor | PerLevel = None,
    kl_direction: str = "to_mean",
    backend: str = "auto",
    chunk_size: int | None = None,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Tensor:
    """Smooth KL divergence that keeps the granularities consistent (paper Eqs. 5-6).

    .. math::
        p^g_i = \\operatorname{softmax}(z^g_{i\\cdot}), \\quad
        m_i = \\frac1G \\sum_g p^g_i, \\quad
        \\mathcal{L}_{sKL} = \\sum_g \\operatorname{mean}_i \\operatorname{KL}(p^g_i \\,\\|\\, m_i)

    computed in log space (:math:`\\log m = \\operatorname{logsumexp}_g \\log p^g - \\log G`), over the
    columns present in every level. ``kl_direction="from_mean"`` uses
    :math:`\\operatorname{KL}(m_i \\| p^g_i)` (the authors' released code).

    Args:
        image_features, logit_scale, logit_bias: as in :func:`soft_clip_loss`.
        text_features: G >= 2 levels with the same N: a [G, N, D] tensor or a list of G [N, D] tensors.
        labels, targets: accepted (and validated) for a uniform call convention; the smooth KL
            does not depend on them.
        text_mask: bool [G, N] or a list of G masks (None or bool [N]).
        kl_direction: "to_mean" | "from_mean".
        %(backend_options)s

    Shape:
        image_features [B, D], text_features [G, N, D]; returns a 0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(4, 8), dim=-1)
        >>> round(float(smooth_kl_loss(images, torch.stack([texts, texts]), 10.0)), 6)
        0.0
    """
    check_choice("kl_direction", kl_direction, KL_DIRECTIONS)
    request = LossTerms(soft_clip=False, pointwise=False, smooth_kl=True, kl_direction=kl_direction)
    means = _evaluate(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        labels,
        targets,
        text_mask,
        single_level=False,
        match="exact",
        request=request,
        backend=backend,
        chunk_size=chunk_size,
        distributed=DistributedOptions(local_loss, gather_with_grad, rank, world_size),
    )
    return _requested(means.smooth_kl, "smooth_kl_loss")


@shared_args
def mgll_loss(
    image_features: Tensor,
    text_features: TextFeatures,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    labels: PerLevel = None,
    targets: PerLevel = None,
    text_mask: Tensor | PerLevel = None,
    soft_clip_weight: float = 0.5,
    pointwise_weight: float = 1.0,
    smooth_kl_weight: float = 1.0,
    level_weights: Sequence[float] | None = None,
    match: str = "exact",
    normalization: str = "pairs",
    pointwise_target: str = "mask",
    kl_direction: str = "to_mean",
    output_dict: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Tensor | dict[str, Tensor]:
    """The full MGLL objective over G text granularities (paper Eq. 7).

    .. math::
        \\mathcal{L} = a_1 \\sum_g w_g \\mathcal{L}^g_{sCLIP} + a_2 \\sum_g w_g \\mathcal{L}^g_{P}
        + a_3 \\mathcal{L}_{sKL}

    with :math:`(a_1, a_2, a_3)` = (``soft_clip_weight``, ``pointwise_weight``, ``smooth_kl_weight``)
    and level weights :math:`w_g` (``level_weights``, default 1). The smooth KL is 0 for a single level and
    needs equal N_g when its weight is positive.

    Args:
        image_features, logit_scale, logit_bias, match: as in :func:`soft_clip_loss`.
        text_features: a [G, N, D] tensor or a list of G tensors [N_g, D].
        labels: None or a list with one entry per level: None, class ids [B] (negative: unlabelled),
            multi-hot [B, C] or LabelSets [B, K] (see :func:`~mgll_loss.targets.level_labels_from_strings`).
        targets: None or a list with one entry per level: None or explicit positives [B, N_g].
        text_mask: bool [G, N] or a list of G masks (None or bool [N_g]).
        soft_clip_weight, pointwise_weight, smooth_kl_weight: non-negative term weights.
        level_weights: G non-negative weights of the per-level terms.
        normalization, pointwise_target: as in :func:`pointwise_loss`.
        kl_direction: as in :func:`smooth_kl_loss`.
        output_dict: return ``{"soft_clip_loss", "pointwise_loss", "smooth_kl_loss"}``, already
            weighted (their sum is the total), instead of the total.
        %(backend_options)s

    Shape:
        image_features [B, D], text_features [G, N, D]; returns a 0-dim tensor or a dict of them.

    Example:
        >>> import torch.nn.functional as F
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(3, 4, 8), dim=-1)
        >>> labels = [torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 2, 2]), None]
        >>> sorted(mgll_loss(images, texts, 10.0, labels=labels, output_dict=True))
        ['pointwise_loss', 'smooth_kl_loss', 'soft_clip_loss']
    """
    weights = {
        "soft_clip_loss": check_weight("soft_clip_weight", soft_clip_weight),
        "pointwise_loss": check_weight("pointwise_weight", pointwise_weight),
        "smooth_kl_loss": check_weight("smooth_kl_weight", smooth_kl_weight),
    }
    check_choice("match", match, MATCH_MODES)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("pointwise_target", pointwise_target, POINTWISE_TARGETS)
    check_choice("kl_direction", kl_direction, KL_DIRECTIONS)
    distributed = DistributedOptions(local_loss, gather_with_grad, rank, world_size)
    request = LossTerms(
        soft_clip=weights["soft_clip_loss"] > 0,
        pointwise=weights["pointwise_loss"] > 0,
        smooth_kl=weights["smooth_kl_loss"] > 0,
        normalization=normalization,
        pointwise_target=pointwise_target,
        kl_direction=kl_direction,
    )
    prepared = _prepare(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        labels,
        targets,
        text_mask,
        single_level=False,
        match=match,
        request=request,
        backend=backend,
        chunk_size=chunk_size,
        distributed=distributed,
        kl_hint=" (or set smooth_kl_weight=0)",
        level_weights=level_weights,
    )
    means = _compute(prepared, backend, chunk_size, local_loss)
    terms = _weighted_terms(means, weights, prepared.level_weights, prepared.problem)
    return terms if output_dict else terms["soft_clip_loss"] + terms["pointwise_loss"] + terms["smooth_kl_loss"]


def _requested(value: Tensor | None, term: str) -> Tensor:
    """A term the request asked for; a backend that returned None for it is a bug, reported as one."""
    if value is None:
        raise RuntimeError(f"{term}: the backend returned no value for a requested term")
    return value


class _Prepared(NamedTuple):
    problem: LossInputs
    request: LossTerms
    world: World
    level_weights: tuple[float, ...]


def _prepare(
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
) -> _Prepared:
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
    return _Prepared(build_problem(inputs, world, distributed, kinds), request, world, per_level)


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


def _evaluate(
    *args: Any, backend: str, chunk_size: int | None, distributed: DistributedOptions, **kwargs: Any
) -> LevelMeans:
    """:func:`_prepare`, then run the backend and normalise its sums into means."""
    prepared = _prepare(*args, backend=backend, chunk_size=chunk_size, distributed=distributed, **kwargs)
    return _compute(prepared, backend, chunk_size, distributed.local_loss)


def _compute(prepared: _Prepared, backend: str, chunk_size: int | None, local_loss: bool) -> LevelMeans:
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
    except TypeError:  # torch < 2.4: no device argument
        if device == "cuda":
            return torch.is_autocast_enabled()
        return torch.is_autocast_cpu_enabled() if device == "cpu" else True


def _weighted_terms(
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
