"""Tiny randomly initialised open_clip and Hugging Face models for the adapter tests (no downloads)."""

from __future__ import annotations

import torch

OPEN_CLIP_CONTEXT = 12
HF_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[EOS]",
    "normal",
    "abnormal",
    "healthy",
    "glaucoma",
    "mild",
    "severe",
    "retinopathy",
    "drusen",
    "cup",
    "observed",
    "no",
    "abnormality",
    "only",
    "microaneurysms",
]


def tiny_open_clip(logit_bias: float | None = None, dtype: torch.dtype = torch.float32):
    """An open_clip ``CLIP`` with a 1-layer ViT (32x32 images) and a 1-layer text transformer; D = 16."""
    import open_clip

    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=dict(context_length=OPEN_CLIP_CONTEXT, vocab_size=49408, width=32, heads=2, layers=1),
        init_logit_bias=logit_bias,
    )
    return model.to(dtype)


def open_clip_tokenizer():
    import open_clip

    return open_clip.SimpleTokenizer(context_length=OPEN_CLIP_CONTEXT)


def _tower_configs(vocab_size: int, image_size: int = 16):
    text = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=2,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    return text, vision


def tiny_hf_clip():
    """A ``transformers.CLIPModel`` with 1-layer towers (16x16 images); D = 8."""
    from transformers import CLIPConfig, CLIPModel

    text, vision = _tower_configs(len(HF_VOCAB))
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))


def tiny_siglip():
    """A ``transformers.SiglipModel`` with 1-layer towers (16x16 images); D = 16, with a logit bias."""
    from transformers import SiglipConfig, SiglipModel

    text, vision = _tower_configs(len(HF_VOCAB))
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision))


def hf_tokenizer():
    """A word-level fast tokenizer over ``HF_VOCAB`` that ends every text with [EOS], built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(HF_VOCAB)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", model_max_length=16)
