"""What every exportable image tower provides: its ``CLIPVisionConfig``, its weights, its reference outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["TowerOutputs", "VisionTower", "copy_layer_norm"]


@dataclass
class TowerOutputs:
    """A tower's outputs for one batch, in the order ``CLIPVisionModel`` returns them.

    ``hidden_states``: L + 1 tensors [B, 1 + P, width] (the embeddings after ``ln_pre``, then each
    block's output); ``pooled`` [B, width] (the class token after ``ln_post``); ``projected`` [B, D]
    (``encode_image`` / ``image_embeds``).
    """

    hidden_states: list[Tensor]
    pooled: Tensor
    projected: Tensor


class VisionTower:
    """An image tower that can be written as a ``CLIPVisionModelWithProjection``.

    Subclasses set ``vision_config`` (``CLIPVisionConfig`` keyword arguments, with
    ``projection_dim``) and implement :meth:`fill`, :meth:`reference` and :meth:`describe`.
    """

    #: The source module whose forward :meth:`reference` runs (an open_clip or transformers module,
    #: which ship no type information; its structure is checked when the tower is built).
    module: Any
    vision_config: dict[str, Any]

    def fill(self, target: Any) -> None:
        """Copy the weights into ``target``, a ``CLIPVisionModelWithProjection`` built from ``vision_config``."""
        raise NotImplementedError

    def reference(self, pixel_values: Tensor) -> TowerOutputs:
        """The source model's own outputs for ``pixel_values`` [B, C, S, S] (eval mode)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the metadata file records about the source (framework, class, projection ...)."""
        raise NotImplementedError


def copy_layer_norm(target: nn.LayerNorm, source: Any) -> None:
    """Copy a LayerNorm's weight and bias (under ``torch.no_grad``)."""
    target.weight.copy_(source.weight)
    target.bias.copy_(source.bias)
