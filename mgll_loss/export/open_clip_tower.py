"""An open_clip ``VisionTransformer`` as a Hugging Face ``CLIPVisionModelWithProjection``: exact, or refused.

The mapping (open_clip -> transformers, per block ``i``):

- ``conv1`` -> ``embeddings.patch_embedding``; ``class_embedding`` -> ``embeddings.class_embedding``;
  ``positional_embedding`` -> ``embeddings.position_embedding``; ``ln_pre`` -> ``pre_layrnorm``;
- ``resblocks.i.attn.in_proj_{weight,bias}`` split in three -> ``layers.i.self_attn.{q,k,v}_proj``;
  ``attn.out_proj`` -> ``self_attn.out_proj``; ``ln_1`` / ``ln_2`` -> ``layer_norm1`` / ``layer_norm2``;
  ``mlp.c_fc`` / ``mlp.c_proj`` -> ``mlp.fc1`` / ``mlp.fc2``;
- ``ln_post`` -> ``post_layernorm``; ``proj`` [width, D] transposed -> ``visual_projection.weight``
  (a tower without ``proj`` gets the identity, so ``image_embeds`` equals ``encode_image``).

LayerScale (``ls_init_value``) is folded: ``x + diag(g)(W a + b)`` is written as ``x + (diag(g) W) a + g b``
into ``out_proj`` and ``fc2``. Everything else a ``CLIPVisionModel`` cannot compute is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .tower import TowerOutputs, VisionTower, copy_layer_norm

__all__ = ["OpenCLIPVisionTower"]

#: open_clip activation modules -> transformers ``hidden_act`` names.
_ACTIVATIONS = {"QuickGELU": "quick_gelu", ("GELU", "none"): "gelu", ("GELU", "tanh"): "gelu_pytorch_tanh"}


def _refuse(part: str, why: str) -> ValueError:
    return ValueError(f"model: cannot export {part} as a CLIPVisionModel: {why}")


def _activation(module: nn.Module) -> str | None:
    name = type(module).__name__
    if name == "GELU":
        return _ACTIVATIONS.get((name, getattr(module, "approximate", "none")))
    return _ACTIVATIONS.get(name)


def _visual(model: Any) -> Any:
    visual = getattr(model, "visual", model)
    kind = type(visual).__name__
    if kind == "ModifiedResNet":
        raise _refuse("the ModifiedResNet image tower", "a CLIPVisionModel is a ViT, this tower is convolutional")
    if kind == "TimmModel":
        raise _refuse(
            "a timm trunk (e.g. BiomedCLIP's)",
            "its blocks, pooling and head are timm's; export it with timm instead",
        )
    if kind != "VisionTransformer":
        raise _refuse(f"the image tower {kind}", "expected an open_clip VisionTransformer")
    return visual


class OpenCLIPVisionTower(VisionTower):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` (or its ``.visual``) ViT image tower, checked for exactness.

    Sizes, heads, LayerNorm eps and the activation are read from the modules themselves.

    Args:
        model: the open_clip model or its ``VisionTransformer``.

    Raises:
        ValueError: naming the part a ``CLIPVisionModel`` cannot represent: a ModifiedResNet or
            timm trunk, non-square images or patches, an image size that does not fit the positional
            embedding, no ``ln_pre``, attentional or average
            pooling, custom blocks (qk-norm, scaled cosine attention, head scaling, extra
            LayerNorms), an activation transformers has no name for, LayerNorms with different
            eps or without affine parameters.
    """

    def __init__(self, model: Any) -> None:
        visual = _visual(model)
        self.module = visual
        image_size, patch_size = tuple(visual.image_size), tuple(visual.patch_size)
        if len(set(image_size)) != 1 or len(set(patch_size)) != 1:
            raise _refuse(
                f"image size {image_size} with patches {patch_size}",
                "CLIPVisionConfig has one square image_size and patch_size",
            )
        tokens = visual.positional_embedding.shape[0]
        if image_size[0] % patch_size[0] or (image_size[0] // patch_size[0]) ** 2 + 1 != tokens:
            raise _refuse(
                f"image_size {image_size[0]} with patch_size {patch_size[0]}",
                f"the positional embedding has {tokens} positions (a class token and a "
                f"{math.isqrt(tokens - 1)}x{math.isqrt(tokens - 1)} grid); image_size does not match the weights",
            )
        if isinstance(visual.ln_pre, nn.Identity):
            raise _refuse("a tower without ln_pre (no_ln_pre=True)", "CLIPVisionModel always applies pre_layrnorm")
        if getattr(visual, "attn_pool", None) is not None:
            raise _refuse("attentional pooling (attn_pool)", "CLIPVisionModel pools the class token")
        if visual.pool_type != "tok":
            raise _refuse(f"pool_type={visual.pool_type!r}", "CLIPVisionModel pools the class token ('tok')")
        if visual.conv1.bias is not None:
            raise _refuse("a patch embedding with a bias", "CLIPVisionModel's patch_embedding has none")
        blocks = list(visual.transformer.resblocks)
        activations = {self._check_block(i, block) for i, block in enumerate(blocks)}
        if len(activations) != 1:
            raise _refuse(f"blocks with different activations {sorted(activations)}", "one hidden_act for all")
        norms = [visual.ln_pre, visual.ln_post] + [norm for block in blocks for norm in (block.ln_1, block.ln_2)]
        self.layer_norm_eps = self._check_norms(norms)
        self.hidden_act = activations.pop()
        self.layer_scale = not isinstance(blocks[0].ls_1, nn.Identity) if blocks else False
        width = visual.class_embedding.shape[-1]
        self.has_projection = visual.proj is not None
        self.vision_config = {
            "hidden_size": width,
            "intermediate_size": blocks[0].mlp.c_fc.out_features if blocks else 4 * width,
            "projection_dim": visual.proj.shape[1] if self.has_projection else width,
            "num_hidden_layers": len(blocks),
            "num_attention_heads": blocks[0].attn.num_heads if blocks else 1,
            "num_channels": visual.conv1.in_channels,
            "image_size": image_size[0],
            "patch_size": patch_size[0],
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
        }

    @staticmethod
    def _check_block(index: int, block: Any) -> str:
        where = f"transformer.resblocks.{index}"
        kind = type(block).__name__
        if kind != "ResidualAttentionBlock" or not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise _refuse(
                f"{where} ({kind})",
                "custom blocks (qk-norm, scaled cosine attention, head scaling, inner LayerNorms) are not CLIP blocks",
            )
        if hasattr(block, "ln_1_kv"):
            raise _refuse(f"{where} (cross-attention)", "CLIPVisionModel blocks attend to themselves only")
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.out_proj.bias is None:
            raise _refuse(f"{where}.attn", "expected a fused in_proj with biases (q/k/v of one width)")
        if list(dict(block.mlp.named_children())) != ["c_fc", "gelu", "c_proj"]:
            raise _refuse(f"{where}.mlp {list(dict(block.mlp.named_children()))}", "expected c_fc, activation, c_proj")
        activation = _activation(block.mlp.gelu)
        if activation is None:
            raise _refuse(
                f"{where}.mlp.gelu ({block.mlp.gelu!r})",
                f"transformers names only {sorted(set(_ACTIVATIONS.values()))}",
            )
        return activation

    @staticmethod
    def _check_norms(norms: list[Any]) -> float:
        for norm in norms:
            if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
                raise _refuse(f"the norm layer {norm!r}", "CLIPVisionModel uses affine LayerNorms throughout")
        eps = {float(norm.eps) for norm in norms}
        if len(eps) != 1:
            raise _refuse(f"LayerNorms with different eps {sorted(eps)}", "CLIPVisionConfig has one layer_norm_eps")
        return eps.pop()

    def describe(self) -> dict[str, Any]:
        return {
            "framework": "open_clip",
            "class": type(self.module).__name__,
            "layer_scale": "folded into out_proj and fc2" if self.layer_scale else None,
            "projection": "proj transposed" if self.has_projection else "identity (the tower has no proj)",
        }

    @torch.no_grad()
    def fill(self, target: Any) -> None:
        visual, vision = self.module, target.vision_model
        embeddings = vision.embeddings
        embeddings.class_embedding.copy_(visual.class_embedding)
        embeddings.patch_embedding.weight.copy_(visual.conv1.weight)
        embeddings.position_embedding.weight.copy_(visual.positional_embedding)
        copy_layer_norm(vision.pre_layrnorm, visual.ln_pre)
        for block, layer in zip(visual.transformer.resblocks, vision.encoder.layers, strict=True):
            attention = layer.self_attn
            weights, biases = block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)
            for projection, weight, bias in zip(
                (attention.q_proj, attention.k_proj, attention.v_proj), weights, biases, strict=True
            ):
                projection.weight.copy_(weight)
                projection.bias.copy_(bias)
            _copy_scaled(attention.out_proj, block.attn.out_proj, block.ls_1)
            copy_layer_norm(layer.layer_norm1, block.ln_1)
            copy_layer_norm(layer.layer_norm2, block.ln_2)
            layer.mlp.fc1.weight.copy_(block.mlp.c_fc.weight)
            layer.mlp.fc1.bias.copy_(block.mlp.c_fc.bias)
            _copy_scaled(layer.mlp.fc2, block.mlp.c_proj, block.ls_2)
        copy_layer_norm(vision.post_layernorm, visual.ln_post)
        projection = target.visual_projection.weight
        projection.copy_(visual.proj.t() if self.has_projection else torch.eye(projection.shape[0]))

    @torch.no_grad()
    def reference(self, pixel_values: Tensor) -> TowerOutputs:
        """Every hidden state, the pooled and the projected output, from open_clip's own forward."""
        visual = self.module
        captured: dict[str, Any] = {"blocks": []}

        def keep(name: str, layout_lnd: bool = False) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                value = output.transpose(0, 1) if layout_lnd else output
                if name == "blocks":
                    captured["blocks"].append(value)
                else:
                    captured[name] = value

            return hook

        blocks = list(visual.transformer.resblocks)
        handles = [
            visual.ln_pre.register_forward_hook(keep("ln_pre")),
            visual.ln_post.register_forward_hook(keep("ln_post")),
        ]
        handles += [block.register_forward_hook(keep("blocks", not block.attn.batch_first)) for block in blocks]
        try:
            with _eval(visual):
                output = visual(pixel_values)
        finally:
            for handle in handles:
                handle.remove()
        projected = output[0] if isinstance(output, tuple) else output
        post = captured["ln_post"]
        return TowerOutputs(
            hidden_states=[captured["ln_pre"], *captured["blocks"]],
            pooled=post[:, 0] if post.dim() == 3 else post,
            projected=projected,
        )


def _copy_scaled(target: nn.Linear, source: nn.Linear, layer_scale: nn.Module) -> None:
    """``target = diag(gamma) source`` (weight rows and bias), gamma = 1 without LayerScale."""
    gamma = getattr(layer_scale, "gamma", None)
    if gamma is None:
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)
    else:
        target.weight.copy_(gamma[:, None] * source.weight)
        target.bias.copy_(gamma * source.bias)


@contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (patch dropout off) for the duration, its mode restored after."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)
