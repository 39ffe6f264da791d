"""``nn.Module`` wrappers of :mod:`mgll_loss.functional` that hold the configuration.

All share the open_clip call convention::

    loss(image_features, text_features, logit_scale, logit_bias=None, *,
         labels=None, targets=None, text_mask=None, output_dict=False)

With ``output_dict=True`` each returns a dict keyed by its term name(s), ready for open_clip's
trainer, which sums every value. Each loss instance checks that the features are
L2-normalised on its first call and every 100 calls after, and warns once if their norms are off by
more than 0.01 (the losses never normalise; :class:`~mgll_loss.norm_check.UnitNormCheck`, skipped
while torch.compile traces).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from . import functional
from .docstrings import shared_args
from .loss_base import LossBase
from .options import (
    KL_DIRECTIONS,
    MATCH_MODES,
    NORMALIZATIONS,
    POINTWISE_TARGETS,
    check_choice,
    check_flag,
    check_level_weights,
    check_term_weights,
)

__all__ = ["SoftCLIPLoss", "PointwiseLoss", "SmoothKLLoss", "MGLLLoss"]

LossOutput = Tensor | dict[str, Tensor]


@shared_args
class SoftCLIPLoss(LossBase):
    """Soft CLIP loss with multi-positive targets built from labels (paper Eqs. 1-3).

    See :func:`mgll_loss.functional.soft_clip_loss` for the math.

    Args:
        %(match)s
        %(backend_options)s

    Shape:
        image_features [B, D], text_features [N, D], labels [B] or [B, C], targets [B, N],
        text_mask [N]; returns a 0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = SoftCLIPLoss()
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss(images, texts, 10.0, labels=torch.tensor([0, 0, 1, 2]), output_dict=True).keys()
        dict_keys(['soft_clip_loss'])
    """

    def __init__(
        self,
        *,
        match: str = "exact",
        backend: str = "auto",
        chunk_size: int | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(backend, chunk_size, local_loss, gather_with_grad, rank, world_size)
        self.match = check_choice("match", match, MATCH_MODES)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        *,
        labels: Tensor | None = None,
        targets: Tensor | None = None,
        text_mask: Tensor | None = None,
        output_dict: bool = False,
    ) -> LossOutput:
        """Compute the loss (arguments and shapes in the class docstring)."""
        self._check_norms(image_features, text_features, text_mask)
        loss = functional.soft_clip_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            labels=labels,
            targets=targets,
            text_mask=text_mask,
            match=self.match,
            **self._common_options(),
        )
        return {"soft_clip_loss": loss} if check_flag("output_dict", output_dict) else loss

    def extra_repr(self) -> str:
        return f"match={self.match!r}, {self._common_repr()}"


@shared_args
class PointwiseLoss(LossBase):
    """Point-wise sigmoid (binary cross-entropy) loss on every image-text pair (paper Eq. 4).

    See :func:`mgll_loss.functional.pointwise_loss` for the math.

    Args:
        %(match)s
        normalization: "pairs" (mean over pairs, default) | "rows" (sum / B, SigLIP).
        pointwise_target: "mask" (P) | "row_normalized" (P / rowsum P, the released code).
        %(backend_options)s

    Shape:
        as :class:`SoftCLIPLoss`.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = PointwiseLoss(normalization="rows")
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss(images, texts, 10.0, -10.0).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        match: str = "exact",
        normalization: str = "pairs",
        pointwise_target: str = "mask",
        backend: str = "auto",
        chunk_size: int | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(backend, chunk_size, local_loss, gather_with_grad, rank, world_size)
        self.match = check_choice("match", match, MATCH_MODES)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.pointwise_target = check_choice("pointwise_target", pointwise_target, POINTWISE_TARGETS)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        *,
        labels: Tensor | None = None,
        targets: Tensor | None = None,
        text_mask: Tensor | None = None,
        output_dict: bool = False,
    ) -> LossOutput:
        """Compute the loss (arguments and shapes in the class docstring)."""
        self._check_norms(image_features, text_features, text_mask)
        loss = functional.pointwise_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            labels=labels,
            targets=targets,
            text_mask=text_mask,
            match=self.match,
            normalization=self.normalization,
            pointwise_target=self.pointwise_target,
            **self._common_options(),
        )
        return {"pointwise_loss": loss} if check_flag("output_dict", output_dict) else loss

    def extra_repr(self) -> str:
        return (
            f"match={self.match!r}, normalization={self.normalization!r}, "
            f"pointwise_target={self.pointwise_target!r}, {self._common_repr()}"
        )


@shared_args
class SmoothKLLoss(LossBase):
    """Smooth KL divergence between each level's image-to-text distribution and their mean (paper Eqs. 5-6).

    See :func:`mgll_loss.functional.smooth_kl_loss` for the math. ``labels`` and ``targets`` are
    accepted (and validated) for a uniform call convention; the smooth KL does not depend on them.

    Args:
        kl_direction: "to_mean" (KL(p^g || m), default) | "from_mean" (KL(m || p^g), the released code).
        %(backend_options)s

    Shape:
        image_features [B, D], text_features [G, N, D] (G >= 2) or a list of G [N, D];
        text_mask [G, N]; returns a 0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = SmoothKLLoss()
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(3, 4, 8), dim=-1)
        >>> bool(loss(images, texts, 10.0) >= 0)
        True
    """

    def __init__(
        self,
        *,
        kl_direction: str = "to_mean",
        backend: str = "auto",
        chunk_size: int | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(backend, chunk_size, local_loss, gather_with_grad, rank, world_size)
        self.kl_direction = check_choice("kl_direction", kl_direction, KL_DIRECTIONS)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor | Sequence[Tensor],
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        *,
        labels: Sequence[Tensor | None] | None = None,
        targets: Sequence[Tensor | None] | None = None,
        text_mask: Any = None,
        output_dict: bool = False,
    ) -> LossOutput:
        """Compute the loss (arguments and shapes in the class docstring)."""
        self._check_norms(image_features, text_features, text_mask)
        loss = functional.smooth_kl_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            labels=labels,
            targets=targets,
            text_mask=text_mask,
            kl_direction=self.kl_direction,
            **self._common_options(),
        )
        return {"smooth_kl_loss": loss} if check_flag("output_dict", output_dict) else loss

    def extra_repr(self) -> str:
        return f"kl_direction={self.kl_direction!r}, {self._common_repr()}"


@shared_args
class MGLLLoss(LossBase):
    """The multi-granular language learning objective (paper Eq. 7).

    .. math::
        \\mathcal{L} = a_1 \\sum_g w_g \\mathcal{L}^g_{sCLIP} + a_2 \\sum_g w_g \\mathcal{L}^g_{P}
        + a_3 \\mathcal{L}_{sKL}

    See :func:`mgll_loss.functional.mgll_loss`.

    Args:
        soft_clip_weight: :math:`a_1` (0.5).
        pointwise_weight: :math:`a_2` (1.0).
        smooth_kl_weight: :math:`a_3` (1.0).
        level_weights: :math:`w_g`, one non-negative number per level (default all 1); constants (a tensor
            must not require grad).
        %(match)s
        normalization: point-wise reduction, "pairs" | "rows".
        pointwise_target: point-wise target, "mask" | "row_normalized".
        kl_direction: "to_mean" | "from_mean".
        %(backend_options)s

    Shape:
        image_features [B, D]; text_features [G, N, D] or a list of G [N_g, D]; labels and
        targets lists of G entries; text_mask [G, N] or a list of G masks; returns a 0-dim
        tensor, or with ``output_dict=True`` the three weighted terms.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = MGLLLoss()
        >>> images = F.normalize(torch.randn(4, 8), dim=-1)
        >>> texts = F.normalize(torch.randn(3, 4, 8), dim=-1)
        >>> labels = [torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 2, 2]), None]
        >>> terms = loss(images, texts, 10.0, labels=labels, output_dict=True)
        >>> torch.allclose(sum(terms.values()), loss(images, texts, 10.0, labels=labels))
        True
    """

    def __init__(
        self,
        *,
        soft_clip_weight: float = 0.5,
        pointwise_weight: float = 1.0,
        smooth_kl_weight: float = 1.0,
        level_weights: Sequence[float] | None = None,
        match: str = "exact",
        normalization: str = "pairs",
        pointwise_target: str = "mask",
        kl_direction: str = "to_mean",
        backend: str = "auto",
        chunk_size: int | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(backend, chunk_size, local_loss, gather_with_grad, rank, world_size)
        self.soft_clip_weight, self.pointwise_weight, self.smooth_kl_weight = check_term_weights(
            soft_clip_weight, pointwise_weight, smooth_kl_weight
        )
        self.level_weights = check_level_weights(level_weights, None)
        self.match = check_choice("match", match, MATCH_MODES)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.pointwise_target = check_choice("pointwise_target", pointwise_target, POINTWISE_TARGETS)
        self.kl_direction = check_choice("kl_direction", kl_direction, KL_DIRECTIONS)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor | Sequence[Tensor],
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        *,
        labels: Sequence[Tensor | None] | None = None,
        targets: Sequence[Tensor | None] | None = None,
        text_mask: Any = None,
        output_dict: bool = False,
    ) -> LossOutput:
        """Compute the loss, or its three weighted terms with ``output_dict=True``."""
        self._check_norms(image_features, text_features, text_mask)
        return functional.mgll_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            labels=labels,
            targets=targets,
            text_mask=text_mask,
            soft_clip_weight=self.soft_clip_weight,
            pointwise_weight=self.pointwise_weight,
            smooth_kl_weight=self.smooth_kl_weight,
            level_weights=self.level_weights,
            match=self.match,
            normalization=self.normalization,
            pointwise_target=self.pointwise_target,
            kl_direction=self.kl_direction,
            output_dict=output_dict,
            **self._common_options(),
        )

    def extra_repr(self) -> str:
        return (
            f"soft_clip_weight={self.soft_clip_weight}, pointwise_weight={self.pointwise_weight}, "
            f"smooth_kl_weight={self.smooth_kl_weight}, level_weights={self.level_weights}, match={self.match!r}, "
            f"normalization={self.normalization!r}, pointwise_target={self.pointwise_target!r}, "
            f"kl_direction={self.kl_direction!r}, {self._common_repr()}"
        )
