"""A Hugging Face ``CLIPModel`` (e.g. trained with ``MGLLTrainer``) as its own image tower, weights as they are."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .tower import TowerOutputs, VisionTower

__all__ = ["HFCLIPVisionTower"]


class HFCLIPVisionTower(VisionTower):
    """The vision model and ``visual_projection`` of a ``CLIPModel`` or ``CLIPVisionModelWithProjection``.

    The configuration (activation, eps, sizes) is the model's own; the weights are copied unchanged.

    Args:
        model: a ``transformers.CLIPModel`` or ``CLIPVisionModelWithProjection``.

    Raises:
        TypeError: any other model (e.g. SigLIP, whose tower has no class token: save it with
            ``SiglipVisionModel`` instead).
    """

    def __init__(self, model: Any) -> None:
        config: Any = getattr(model, "config", None)
        kind = type(config).__name__
        if kind not in ("CLIPConfig", "CLIPVisionConfig") or not hasattr(model, "visual_projection"):
            raise TypeError(
                f"model: expected a transformers CLIPModel or CLIPVisionModelWithProjection, got {type(model).__name__}"
            )
        self.module = model
        vision = config.vision_config if kind == "CLIPConfig" else config
        self.vision_config = {**vision.to_dict(), "projection_dim": model.visual_projection.out_features}
        self.hidden_act = str(vision.hidden_act)

    def describe(self) -> dict[str, Any]:
        return {"framework": "transformers", "class": type(self.module).__name__, "projection": "visual_projection"}

    @torch.no_grad()
    def fill(self, target: Any) -> None:
        target.vision_model.load_state_dict(self.module.vision_model.state_dict())
        target.visual_projection.load_state_dict(self.module.visual_projection.state_dict())

    @torch.no_grad()
    def reference(self, pixel_values: Tensor) -> TowerOutputs:
        training = self.module.training
        self.module.eval()
        try:
            output = self.module.vision_model(pixel_values=pixel_values, output_hidden_states=True)
            projected = self.module.visual_projection(output.pooler_output)
        finally:
            self.module.train(training)
        return TowerOutputs(list(output.hidden_states), output.pooler_output, projected)
