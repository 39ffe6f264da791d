"""The CLIP model of the examples: a tiny open_clip CLIP that trains on CPU, or any open_clip architecture."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import open_clip
from torch import Tensor, nn

from .errors import ExampleError

TINY = "tiny"
#: The tiny model with a ViT image tower instead of the ModifiedResNet: a tower that
#: ``examples/export_vision_tower.py`` can write as a Hugging Face ``CLIPVisionModel``.
TINY_VIT = "tiny-vit"
TINY_CONTEXT_LENGTH = 40
TINY_IMAGE_SIZE = 64


@dataclass
class ModelBundle:
    """An open_clip model with what the data pipeline needs to feed it."""

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], Tensor]  # list of strings -> token ids [n, L]
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]


def _tiny_clip(vit: bool = False, custom_text: bool = False, **logit_init: float) -> nn.Module:
    """A small ModifiedResNet (one block per stage, width 24, 64x64 images) and a 2-layer text transformer; D = 64.

    On the synthetic sets a convolutional tower learns the small lesions much faster than a ViT
    of the same cost (zero-shot AUC 0.97 vs 0.64 after the demo's 144 steps). ``vit`` builds the
    ViT instead (2 layers, width 64, 8x8 patches: the tower an MLLM can take, see
    ``examples/export_vision_tower.py``). ``custom_text`` builds it as an open_clip
    ``CustomTextCLIP`` (text tower under ``text.``, as the authors' checkpoints); ``logit_init``
    holds ``init_logit_scale`` (log s) / ``init_logit_bias``.
    """
    if vit:
        vision_cfg: dict = dict(layers=2, width=64, head_width=32, patch_size=8, image_size=TINY_IMAGE_SIZE)
    else:
        vision_cfg = dict(layers=(1, 1, 1, 1), width=24, image_size=TINY_IMAGE_SIZE)
    return (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(
        **logit_init,
        embed_dim=64,
        vision_cfg=vision_cfg,
        text_cfg=dict(context_length=TINY_CONTEXT_LENGTH, vocab_size=49408, width=64, heads=2, layers=2),
    )


def build_model(
    name: str,
    pretrained: str | None = None,
    *,
    init_logit_scale: float | None = None,
    init_logit_bias: float | None = None,
    custom_text: bool = False,
) -> ModelBundle:
    """The model ``name`` ("tiny", "tiny-vit" or an open_clip architecture), randomly initialised unless ``pretrained``.

    ``pretrained`` (e.g. "openai") loads open_clip weights, which may download them: the tests and
    the demo never pass it. ``init_logit_scale`` is the scale s itself (the model stores log s);
    ``init_logit_bias`` gives the model a learnable ``logit_bias`` (open_clip's SigLIP models have
    one); ``custom_text`` builds open_clip's ``CustomTextCLIP`` layout (``force_custom_text``).
    """
    logit_init: dict[str, float] = {}
    if init_logit_scale is not None:
        logit_init["init_logit_scale"] = math.log(init_logit_scale)
    if init_logit_bias is not None:
        logit_init["init_logit_bias"] = init_logit_bias
    if name in (TINY, TINY_VIT):
        if pretrained:
            raise ExampleError(
                f"--pretrained {pretrained}: the {name} model has no pretrained weights; pick an open_clip --model"
            )
        model = _tiny_clip(name == TINY_VIT, custom_text, **logit_init)
        tokenizer = open_clip.SimpleTokenizer(context_length=TINY_CONTEXT_LENGTH)
        return ModelBundle(
            model, tokenizer, TINY_IMAGE_SIZE, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        )
    if name not in open_clip.list_models():
        raise ExampleError(
            f"--model {name}: not an open_clip architecture (see open_clip.list_models(), or use 'tiny' or 'tiny-vit')"
        )
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, force_custom_text=custom_text, **logit_init)
    except RuntimeError as error:  # unknown pretrained tag, weights not available offline
        raise ExampleError(f"--model {name} --pretrained {pretrained}: {str(error).splitlines()[0]}") from error
    size = model.visual.image_size
    image_size = size if isinstance(size, int) else size[0]
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return ModelBundle(model, open_clip.get_tokenizer(name), image_size, mean, std)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
