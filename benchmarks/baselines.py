"""What the backends are measured against, each a forward+backward-able callable ``f(images, texts, scale)``.

- ``naive``: the three MGLL terms written per level the obvious way (materialised masks,
  ``log_softmax``, ``binary_cross_entropy_with_logits``, ``kl_div``), autograd backward.
- ``clip_x{G}``: open_clip's ``ClipLoss`` once per level (plain CLIP, one term only).
- ``inf-cl``: Inf-CL's tiled contrastive loss once per level (CUDA; plain CLIP positives).
- ``gemms``: the bare matmuls a fused loss cannot avoid, three per level: the forward logits
  and the two gradient products, with a constant upstream gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def naive_mgll(labels: list[Tensor | None]) -> LossFn:
    """The MGLL objective (default weights 0.5 / 1 / 1, point-wise mean over pairs) per level with autograd."""

    def loss(images: Tensor, texts: Tensor, scale: Tensor) -> Tensor:
        log_probs, total = [], images.new_zeros(())
        for g, level in enumerate(texts):
            logits = scale * images @ level.t()
            ids = labels[g]
            eye = torch.eye(len(images), dtype=images.dtype, device=images.device)
            positives = eye if ids is None else (ids[:, None] == ids[None, :]).to(images.dtype)
            rows = -(positives / positives.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
            cols = -(positives / positives.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
            total = total + 0.5 * 0.5 * (rows + cols)
            total = total + F.binary_cross_entropy_with_logits(logits, positives)
            log_probs.append(logits.log_softmax(1))
        stacked = torch.stack(log_probs)
        log_mean = torch.logsumexp(stacked, 0) - math.log(len(texts))
        kl = F.kl_div(log_mean.expand_as(stacked), stacked, reduction="none", log_target=True)
        return total + kl.sum() / len(images)

    return loss


def open_clip_per_level() -> LossFn:
    """open_clip ``ClipLoss`` summed over levels (needs ``open_clip_torch``)."""
    from open_clip.loss import ClipLoss

    clip = ClipLoss()

    def loss(images: Tensor, texts: Tensor, scale: Tensor) -> Tensor:
        return sum(clip(images, level, scale) for level in texts)

    return loss


def inf_cl_per_level() -> LossFn:
    """Inf-CL's ``cal_inf_loss`` (PyPI ``inf-cl``, CUDA only, hard labels) summed over levels.

    It reads the torch.distributed world: run it inside an initialised process group (one rank is fine).
    """
    from inf_cl import cal_inf_loss

    def loss(images: Tensor, texts: Tensor, scale: Tensor) -> Tensor:
        return sum(cal_inf_loss(images, level, scale=scale) for level in texts)

    return loss


def bare_gemms() -> LossFn:
    """Three matmuls per level (logits, and the two gradients of a loss with upstream gradient 1)."""

    class _Gemms(torch.autograd.Function):
        @staticmethod
        def forward(ctx, images: Tensor, texts: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
            ctx.save_for_backward(images, texts)
            ctx.logits = [images @ level.t() for level in texts]
            return images.new_zeros(())

        @staticmethod
        def backward(ctx, grad: Tensor):  # type: ignore[override]
            images, texts = ctx.saved_tensors
            grad_images = torch.zeros_like(images)
            grad_texts = torch.empty_like(texts)
            for g, logits in enumerate(ctx.logits):
                grad_images.addmm_(logits, texts[g])
                torch.mm(logits.t(), images, out=grad_texts[g])
            return grad_images, grad_texts, None

    return lambda images, texts, scale: _Gemms.apply(images, texts, scale)
