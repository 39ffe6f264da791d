"""open_clip adapter: :class:`MultiGranularOpenCLIP` and the helpers an ``open_clip_train`` user needs.

Typical loop (``pip install "mgll-loss[open_clip]"``)::

    wrapper = MultiGranularOpenCLIP(model)                       # an open_clip CLIP / CustomTextCLIP
    loss_fn = create_loss(args)                                  # local_loss, gather_with_grad, rank, world_size
    texts = tokenize_levels(tokenizer, [normality, category, description])   # [G, B, L]
    losses = loss_fn(**wrapper(images, texts), labels=labels, output_dict=True)
    sum(losses.values()).backward(); optimizer.step(); wrapper.clamp_logit_scale()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from ..losses import MGLLLoss
from .base import LevelTokens, MultiGranularCLIP, check_images, flatten_level_texts, stack_levels

__all__ = ["MultiGranularOpenCLIP", "create_loss", "tokenize_levels"]

_EXTRA = "open_clip"


class MultiGranularOpenCLIP(MultiGranularCLIP):
    """Wrap an open_clip ``CLIP`` / ``CustomTextCLIP`` so it feeds :class:`~mgll_loss.MGLLLoss`.

    The images are encoded once; the G levels of text go through the text tower in one call on
    the flattened [G*B, L] tokens. Features are L2-normalised, the logit scale is exponentiated.

    Args:
        model: an open_clip model (``encode_image``, ``encode_text``, ``logit_scale``,
            optionally ``logit_bias``), not wrapped in DDP: wrap this adapter in DDP instead.

    Shape:
        images [B, C, H, W]; texts [G, B, L] token ids or a sequence of G [B, L]; returns
        ``image_features`` [B, D], ``text_features`` [G, B, D], ``logit_scale`` (0-dim) and
        ``logit_bias`` when the model has one.

    Example:
        >>> import open_clip
        >>> from mgll_loss import MGLLLoss
        >>> model = open_clip.CLIP(
        ...     embed_dim=16, vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        ...     text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
        >>> wrapper = MultiGranularOpenCLIP(model)
        >>> tokenizer = open_clip.SimpleTokenizer(context_length=16)
        >>> texts = tokenize_levels(tokenizer, [["normal", "abnormal"], ["healthy", "glaucoma"]])
        >>> outputs = wrapper(torch.randn(2, 3, 32, 32), texts)
        >>> sorted(outputs), tuple(outputs["text_features"].shape)
        (['image_features', 'logit_scale', 'text_features'], (2, 2, 16))
        >>> loss = MGLLLoss()(**outputs, labels=[torch.tensor([0, 1]), torch.tensor([0, 1])])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(
            model,
            framework="open_clip",
            extra=_EXTRA,
            kind="an open_clip CLIP model",
            methods=("encode_image", "encode_text"),
        )

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def encode_text(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        return self.model.encode_text(tokens)

    def forward(self, images: Tensor, texts: LevelTokens) -> dict[str, Tensor]:
        """Features for ``MGLLLoss`` from images [B, C, H, W] and token ids [G, B, L]."""
        tokens = stack_levels("texts", texts, check_images("images", images))
        return self.features(images, tokens, None)


def tokenize_levels(tokenizer: Callable[[Sequence[str]], Tensor], levels: Sequence[Sequence[str]]) -> Tensor:
    """Token ids [G, B, L] for G levels of B strings, in one tokenizer call.

    Args:
        tokenizer: an open_clip tokenizer (``open_clip.get_tokenizer(name)``): list of strings -> [n, L].
        levels: G sequences of B captions, e.g. ``[normality, category, description]``.

    Example:
        >>> import open_clip
        >>> tokens = tokenize_levels(open_clip.SimpleTokenizer(context_length=8), [["a", "b", "c"], ["d", "e", "f"]])
        >>> tuple(tokens.shape)
        (2, 3, 8)
    """
    flat, num_levels, batch_size = flatten_level_texts(levels)
    tokens = tokenizer(flat)
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[0] != len(flat):
        raise TypeError(f"tokenizer: expected a tensor [{len(flat)}, L] of token ids, got {type(tokens).__name__}")
    return tokens.reshape(num_levels, batch_size, tokens.shape[1])


def create_loss(args: Any = None, **loss_options: Any) -> MGLLLoss:
    """An :class:`~mgll_loss.MGLLLoss` with the distributed flags of an ``open_clip_train`` namespace.

    Reads ``local_loss``, ``gather_with_grad``, ``rank`` and ``world_size`` from ``args`` (any
    object with those attributes; missing ones keep the loss defaults, ``rank``/``world_size``
    then come from torch.distributed); ``loss_options`` (e.g. ``soft_clip_weight``, ``backend``)
    go to the constructor and win over ``args``.

    Example:
        >>> from types import SimpleNamespace
        >>> create_loss(SimpleNamespace(local_loss=True, gather_with_grad=True, rank=0, world_size=1)).distributed
        DistributedOptions(local_loss=True, gather_with_grad=True, rank=0, world_size=1)
    """
    flags = {
        name: getattr(args, name)
        for name in ("local_loss", "gather_with_grad", "rank", "world_size")
        if hasattr(args, name)
    }
    return MGLLLoss(**{**flags, **loss_options})
