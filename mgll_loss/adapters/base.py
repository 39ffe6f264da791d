"""What both adapters share: the lazy framework import, level stacking and the feature dict."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..labels import check_level_strings
from ..utils import clamp_logit_scale

__all__ = ["MultiGranularCLIP", "require", "check_images", "stack_levels", "flatten_level_texts"]

LevelTokens = Tensor | Sequence[Tensor]


def require(module: str, extra: str, user: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the ``mgll-loss`` extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f'{user} needs {module}: pip install "mgll-loss[{extra}]"') from error


def check_images(name: str, images: Tensor, dims: int = 4) -> int:
    """Check an image batch [B, C, H, W] and return B."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a [B, C, H, W] tensor, got {type(images).__name__}")
    if images.dim() != dims or images.shape[0] == 0:
        raise ValueError(f"{name}: expected shape [B >= 1, C, H, W], got {tuple(images.shape)}")
    return images.shape[0]


def stack_levels(name: str, value: object, batch_size: int) -> Tensor:
    """Token ids (or masks) of G levels as one tensor [G, B, L].

    Args:
        name: the argument name used in error messages.
        value: a [G, B, L] tensor or a sequence of G [B, L] tensors (``LevelTokens``); anything
            else raises a TypeError.
        batch_size: B, the number of images.
    """
    if isinstance(value, Tensor):
        stacked = value
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        for g, level in enumerate(value):
            if not isinstance(level, Tensor):
                raise TypeError(f"{name}[{g}]: expected a [B, L] tensor, got {type(level).__name__}")
        shapes = [tuple(level.shape) for level in value]
        if any(len(shape) != 2 for shape in shapes) or len(set(shapes)) > 1:
            raise ValueError(f"{name}: expected G tensors of one shape [B, L], got shapes {shapes}")
        stacked = torch.stack(list(value))
    else:
        raise TypeError(
            f"{name}: expected a [G, B, L] tensor or a sequence of G [B, L] tensors, got {type(value).__name__}"
        )
    if stacked.dim() != 3:
        raise ValueError(f"{name}: expected shape [G, B, L], got {tuple(stacked.shape)}")
    if stacked.shape[1] != batch_size:
        raise ValueError(
            f"{name}: expected [G, B={batch_size}, L] (one text per image and level), got {tuple(stacked.shape)}"
        )
    if stacked.shape[0] == 0 or stacked.shape[2] == 0:
        raise ValueError(f"{name}: expected at least one level and one token, got shape {tuple(stacked.shape)}")
    return stacked


def flatten_level_texts(levels: Sequence[Sequence[str]]) -> tuple[list[str], int, int]:
    """G lists of B strings -> the G*B strings level by level, G and B (validated)."""
    if isinstance(levels, str) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise TypeError(f"levels: expected a non-empty sequence of G sequences of B strings, got {levels!r:.60}")
    flat: list[str] = []
    for g, level in enumerate(levels):
        check_level_strings(g, level)
        for i, text in enumerate(level):
            if not isinstance(text, str):
                raise TypeError(f"levels[{g}][{i}]: expected a string, got {type(text).__name__}")
        flat.extend(level)
    sizes = [len(level) for level in levels]
    if len(set(sizes)) > 1 or sizes[0] == 0:
        raise ValueError(f"levels: expected the same batch size B >= 1 in every level, got sizes {sizes}")
    return flat, len(levels), sizes[0]


class MultiGranularCLIP(nn.Module):
    """Base of the adapters: images once, G levels of text in one text-tower call.

    Subclasses implement ``encode_image`` ([B, ...] -> [B, D]) and ``encode_text`` (token ids
    [G*B, L], optional mask [G*B, L] -> [G*B, D]); the wrapped model keeps ``logit_scale``
    (:math:`\\log s`) and, if it has one, ``logit_bias`` as parameters.
    """

    #: The wrapped framework model (open_clip or transformers, which ship no type information); its
    #: methods and ``logit_scale`` parameter are checked when the adapter is built.
    model: Any

    def __init__(self, model: nn.Module, *, framework: str, extra: str, kind: str, methods: Sequence[str]) -> None:
        super().__init__()
        require(framework, extra, type(self).__name__)
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise TypeError(
                f"model: got {type(model).__name__}; wrap the unwrapped model in {type(self).__name__} "
                "and wrap the adapter in DistributedDataParallel instead, so gradients are synchronised"
            )
        for method in methods:
            if not callable(getattr(model, method, None)):
                raise TypeError(f"model: expected {kind} with {method}(), got {type(model).__name__}")
        if not isinstance(getattr(model, "logit_scale", None), Tensor):
            raise TypeError(f"model: expected {kind} with a logit_scale parameter, got {type(model).__name__}")
        self.model = model

    def encode_image(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def features(self, images: Tensor, tokens: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        """The MGLLLoss inputs from images [B, ...] and token ids (and mask) [G, B, L]."""
        num_levels, batch_size, length = tokens.shape
        if mask is not None and mask.shape != tokens.shape:
            raise ValueError(f"attention_mask: expected the token shape {tuple(tokens.shape)}, got {tuple(mask.shape)}")
        image_features = F.normalize(self.encode_image(images), dim=-1)
        flat_mask = None if mask is None else mask.reshape(num_levels * batch_size, length)
        text = self.encode_text(tokens.reshape(num_levels * batch_size, length), flat_mask)
        features = {
            "image_features": image_features,
            "text_features": F.normalize(text, dim=-1).reshape(num_levels, batch_size, -1),
            "logit_scale": self.model.logit_scale.exp(),
        }
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:
            features["logit_bias"] = bias
        return features

    def clamp_logit_scale(self, max_value: float = 100.0) -> Tensor:
        """Clamp the model's log logit scale to ``[0, log(max_value)]`` after an optimiser step."""
        return clamp_logit_scale(self.model.logit_scale, max_value)
