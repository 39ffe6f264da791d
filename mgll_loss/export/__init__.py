"""Export an MGLL-pretrained CLIP image tower for multimodal LLMs (``pip install "mgll-loss[hf]"``).

:func:`export_vision_tower` writes an open_clip ``CLIP`` / ``CustomTextCLIP`` ViT tower, or a
Hugging Face ``CLIPModel`` (e.g. trained with ``MGLLTrainer``), as a directory that
``CLIPVisionModel.from_pretrained`` and ``CLIPVisionModelWithProjection.from_pretrained`` load
(LLaVA, LLaVA-Med, ``LlavaForConditionalGeneration``, Mini-Gemini), with the training
preprocessing as ``preprocessor_config.json``, and checks that it reproduces every hidden state.
:func:`load_open_clip_checkpoint` reads the image tower of the usual checkpoint layouts.
transformers and open_clip are imported only when called, so this package imports with torch alone.
"""

from .check import ExportCheck, ExportCheckError
from .checkpoints import load_open_clip_checkpoint, read_checkpoint, vision_state_dict
from .preprocessing import RESAMPLING, RESIZE_MODES, ImagePreprocessing
from .vision_tower import METADATA_FILE, ExportReport, check_export, export_vision_tower, vision_tower

__all__ = [
    "ExportCheck",
    "ExportCheckError",
    "ExportReport",
    "ImagePreprocessing",
    "METADATA_FILE",
    "RESAMPLING",
    "RESIZE_MODES",
    "check_export",
    "export_vision_tower",
    "load_open_clip_checkpoint",
    "read_checkpoint",
    "vision_state_dict",
    "vision_tower",
]
