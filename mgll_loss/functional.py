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

from torch import Tensor

from .backends import LossTerms
from .dispatch import compute, evaluate, loss_output, prepare, requested
from .docstrings import shared_args
from .global_batch import DistributedOptions
from .options import (
    KL_DIRECTIONS,
    MATCH_MODES,
    NORMALIZATIONS,
    POINTWISE_TARGETS,
    check_choice,
    check_flag,
    check_term_weights,
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
    soft_clip, pointwise, smooth_kl = evaluate(
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
    return requested(soft_clip, "soft_clip_loss")


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
    soft_clip, pointwise, smooth_kl = evaluate(
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
    return requested(pointwise, "pointwise_loss")


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

    computed from log-probabilities (``log_softmax``, never the log of a raw logit), over the
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
    soft_clip, pointwise, smooth_kl = evaluate(
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
    return requested(smooth_kl, "smooth_kl_loss")


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
        level_weights: G non-negative weights of the per-level terms (constants: numbers, or a tensor that
            does not require grad).
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
    weights = check_term_weights(soft_clip_weight, pointwise_weight, smooth_kl_weight)
    check_flag("output_dict", output_dict)
    check_choice("match", match, MATCH_MODES)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("pointwise_target", pointwise_target, POINTWISE_TARGETS)
    check_choice("kl_direction", kl_direction, KL_DIRECTIONS)
    distributed = DistributedOptions(local_loss, gather_with_grad, rank, world_size)
    request = LossTerms(
        soft_clip=weights[0] > 0,
        pointwise=weights[1] > 0,
        smooth_kl=weights[2] > 0,
        normalization=normalization,
        pointwise_target=pointwise_target,
        kl_direction=kl_direction,
    )
    prepared = prepare(
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
    terms = compute(prepared, weights, backend, chunk_size, local_loss)
    return loss_output(terms, prepared.problem, output_dict)
