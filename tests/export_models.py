"""Tiny open_clip ViT CLIPs with random LayerNorms and embeddings for the export tests (no downloads).

Default LayerNorm weights (1) and biases (0) would hide swapped keys, so every LayerNorm, the class
and position embeddings, the projection and any LayerScale get random values.
"""

from __future__ import annotations

import torch
from torch import nn


def tiny_vit_clip(
    *, quick_gelu: bool = False, image_size: int = 32, seed: int = 0, custom_text: bool = False, **vision: object
) -> nn.Module:
    """An open_clip ``CLIP`` (or ``CustomTextCLIP``) with a 2-layer ViT (patch 8, width 32, 2 heads); D = 16."""
    import open_clip

    torch.manual_seed(seed)
    vision_cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=image_size, **vision)
    text_cfg = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick_gelu)
    randomize(model.visual)
    return model.eval()


@torch.no_grad()
def randomize(visual: nn.Module) -> None:
    """Random LayerNorm weights and biases, embeddings, projection and LayerScale gammas."""
    for module in visual.modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
            module.bias.copy_(0.5 * torch.randn_like(module.bias))
        gamma = getattr(module, "gamma", None)
        if isinstance(gamma, torch.Tensor):
            gamma.copy_(1 + 0.5 * torch.randn_like(gamma))
    for name in ("class_embedding", "positional_embedding", "proj"):
        value = getattr(visual, name, None)
        if isinstance(value, torch.Tensor):
            value.copy_(torch.randn_like(value))


@torch.no_grad()
def open_clip_states(visual: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """open_clip's embeddings after ``ln_pre`` and each block's output [B, 1 + P, width], step by step."""
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    states = [x]
    for block in visual.transformer.resblocks:
        x = block(x) if block.attn.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        states.append(x)
    return states
