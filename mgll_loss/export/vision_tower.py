"""``export_vision_tower``: an open_clip or Hugging Face CLIP image tower as a Hugging Face directory."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..adapters.base import require
from .check import ExportCheck, ExportCheckError, compare_with_source, quiet_transformers, sample_pixels
from .hf_tower import HFCLIPVisionTower
from .open_clip_tower import OpenCLIPVisionTower
from .preprocessing import ImagePreprocessing
from .tower import VisionTower

__all__ = ["METADATA_FILE", "ExportReport", "export_vision_tower", "vision_tower", "check_export"]

#: The metadata file written next to ``config.json``: source, activation, preprocessing, the check.
METADATA_FILE = "mgll_export.json"
#: Every file an export writes; ``overwrite`` replaces these and nothing else.
EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", METADATA_FILE)


@dataclass
class ExportReport:
    """What :func:`export_vision_tower` wrote: the directory, its metadata and the check (None if skipped)."""

    output_dir: Path
    metadata: dict[str, Any]
    check: ExportCheck | None


def vision_tower(model: nn.Module) -> VisionTower:
    """The exportable image tower of ``model`` (open_clip or transformers), or an error naming what cannot be.

    Raises:
        TypeError: a DDP-wrapped model, or neither an open_clip nor a transformers CLIP model.
        ValueError: an open_clip tower a ``CLIPVisionModel`` cannot represent (the message names the part).

    Example:
        >>> import open_clip
        >>> model = open_clip.CLIP(
        ...     embed_dim=8, vision_cfg=dict(layers=(1, 1, 1, 1), width=16, image_size=32),
        ...     text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
        >>> try:
        ...     vision_tower(model)
        ... except ValueError as error:
        ...     print(str(error)[:60])
        model: cannot export the ModifiedResNet image tower as a CLI
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError(f"model: got {type(model).__name__}; pass the wrapped model (model.module)")
    if hasattr(model, "config"):
        return HFCLIPVisionTower(model)
    if hasattr(model, "visual") or type(model).__name__ in ("VisionTransformer", "ModifiedResNet", "TimmModel"):
        return OpenCLIPVisionTower(model)
    raise TypeError(
        "model: expected an open_clip CLIP/CustomTextCLIP (or its .visual) or a transformers CLIPModel, "
        f"got {type(model).__name__}"
    )


def _float32(model: nn.Module) -> None:
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(
            f"model: the check compares in float32, the model holds {sorted(map(str, dtypes))}: "
            "export model.float() (the exported weights are float32 either way)"
        )


def _finite(model: nn.Module) -> None:
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise ValueError(f"model: the weights contain NaN/inf (first: {name}); export a model with finite weights")


def check_export(
    model: nn.Module, directory: str | os.PathLike[str], pixel_values: Tensor | None = None, atol: float = 1e-5
) -> ExportCheck:
    """Reload an exported directory and compare every hidden state, the pooled and the projected output.

    ``CLIPVisionModel`` gives ``hidden_states`` (the embeddings after ``pre_layrnorm``, then each
    layer) and ``pooler_output``; ``CLIPVisionModelWithProjection`` gives ``image_embeds``; each
    is compared with the source model's own forward (open_clip: its ``ln_pre`` and block outputs
    through hooks, ``ln_post`` of the class token, ``encode_image``).

    Args:
        model: the source model, float32.
        directory: the exported directory.
        pixel_values: [B, C, S, S]; default two seeded standard-normal images.
        atol: the largest absolute difference allowed.

    Returns:
        :class:`~mgll_loss.export.ExportCheck` (``passed``, ``max_abs_diff`` per output, ``summary()``).

    Example:
        >>> import open_clip, tempfile
        >>> model = open_clip.CLIP(
        ...     embed_dim=8, vision_cfg=dict(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
        ...     text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
        >>> prep = ImagePreprocessing(16, (0.5,) * 3, (0.25,) * 3, "bicubic", "shortest", source="doctest")
        >>> report = export_vision_tower(model, tempfile.mkdtemp() + "/t", preprocessing=prep, check=False)
        >>> directory = report.output_dir
        >>> check = check_export(model, directory)
        >>> check.passed, sorted(check.max_abs_diff)
        (True, ['hidden_states[0]', 'hidden_states[1]', 'image_embeds', 'pooler_output'])
    """
    _check_atol(atol)
    tower = vision_tower(model)
    _float32(tower.module)
    config = tower.vision_config
    pixels = sample_pixels(config["num_channels"], config["image_size"]) if pixel_values is None else pixel_values
    return compare_with_source(tower, directory, pixels, atol)


def export_vision_tower(
    model: nn.Module,
    output_dir: str | os.PathLike[str],
    *,
    preprocessing: ImagePreprocessing,
    source: Mapping[str, Any] | str | None = None,
    check: bool = True,
    atol: float = 1e-5,
    overwrite: bool = False,
    hidden_act: str | None = None,
) -> ExportReport:
    """Write a CLIP image tower as a directory ``CLIPVisionModel(WithProjection).from_pretrained`` loads.

    The directory holds ``config.json`` and ``model.safetensors`` (a ``CLIPVisionModelWithProjection``,
    float32: ``vision_model.*`` and ``visual_projection.weight``, the layout of Hugging Face CLIP
    checkpoints), ``preprocessor_config.json`` (a ``CLIPImageProcessor`` from ``preprocessing``)
    and ``mgll_export.json`` (source, activation, preprocessing, versions, the check). It is
    written next to ``output_dir`` and moved into place only once the check passed.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` with a ViT image tower (or the tower
            itself), or a transformers ``CLIPModel`` / ``CLIPVisionModelWithProjection``.
        output_dir: the directory to create.
        preprocessing: the training transforms' size, mean, std and resampling.
        source: what to record as the source (e.g. the checkpoint path and layout).
        check: reload the directory and compare every output with ``model`` (float32).
        atol: the check's largest absolute difference.
        overwrite: replace an ``output_dir`` that holds an earlier export (only the files an export
            writes, :data:`EXPORT_FILES`; a directory holding anything else is refused).
        hidden_act: override the activation read from the model (for diagnosis: a wrong one fails the check).

    Returns:
        :class:`ExportReport`.

    Raises:
        ValueError: a non-positive or non-finite ``atol``, NaN/inf weights, a tower a ``CLIPVisionModel`` cannot
            represent (the part is named), a preprocessing whose size or channels differ from the
            model's, a non-float32 model with ``check=True``.
        TypeError: not a CLIP model, or ``preprocessing`` not an :class:`ImagePreprocessing`.
        FileExistsError: ``output_dir`` exists and ``overwrite`` is off, or it is not an export, or it
            holds entries besides the export's files.
        ExportCheckError: the reloaded directory differs from the model (nothing is written).

    Example:
        >>> import open_clip, tempfile
        >>> model = open_clip.CLIP(
        ...     embed_dim=8, vision_cfg=dict(layers=2, width=16, head_width=8, patch_size=8, image_size=16),
        ...     text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
        >>> prep = ImagePreprocessing(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        ...                           resample="bilinear", resize_mode="squash", source="doctest")
        >>> report = export_vision_tower(model, tempfile.mkdtemp() + "/tower", preprocessing=prep)
        >>> report.check.passed, sorted(p.name for p in report.output_dir.iterdir())
        (True, ['config.json', 'mgll_export.json', 'model.safetensors', 'preprocessor_config.json'])
    """
    transformers = require("transformers", "hf", "export_vision_tower")
    if not isinstance(preprocessing, ImagePreprocessing):
        raise TypeError(f"preprocessing: expected an ImagePreprocessing, got {type(preprocessing).__name__}")
    _check_atol(atol)
    tower = vision_tower(model)
    config = dict(tower.vision_config)
    read_act = config["hidden_act"]
    if hidden_act is not None:
        names = sorted(require("transformers.activations", "hf", "export_vision_tower").ACT2FN)
        if hidden_act not in names:
            raise ValueError(
                f"hidden_act: expected a transformers activation name ({', '.join(names)}), got {hidden_act!r}"
            )
        config["hidden_act"] = hidden_act
    if preprocessing.size != config["image_size"] or len(preprocessing.mean) != config["num_channels"]:
        raise ValueError(
            f"preprocessing: size {preprocessing.size} with {len(preprocessing.mean)} channels, the model takes "
            f"{config['image_size']}x{config['image_size']} images with {config['num_channels']} channels"
        )
    if check:
        _float32(tower.module)
    _finite(tower.module)
    output = Path(output_dir)
    _check_target(output, overwrite)
    target = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**config)).float()
    tower.fill(target)
    staging = output.with_name(f".{output.name}.export-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with quiet_transformers(transformers):
            target.save_pretrained(staging)
        transformers.CLIPImageProcessor(**preprocessing.image_processor_kwargs()).save_pretrained(staging)
        result = None
        if check:
            pixels = sample_pixels(config["num_channels"], config["image_size"])
            result = compare_with_source(tower, staging, pixels, atol)
            if not result.passed:
                hint = (
                    "" if hidden_act is None else f" (hidden_act forced to {hidden_act!r}, the model has {read_act!r})"
                )
                raise ExportCheckError(result, hint)
        metadata = _metadata(tower, config, read_act, preprocessing, source, result)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if output.exists():
            for name in EXPORT_FILES:
                (output / name).unlink(missing_ok=True)
            output.rmdir()  # fails rather than delete anything an export did not write
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(output, metadata, result)


def _check_atol(atol: float) -> None:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol <= 0:
        raise ValueError(f"atol: expected a positive finite number (the check's largest difference), got {atol!r}")


def _check_target(output: Path, overwrite: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir() or (any(output.iterdir()) and not (output / METADATA_FILE).is_file()):
        raise FileExistsError(f"output_dir: {output} exists and is not an export of this function; not replacing it")
    extra = sorted(entry.name for entry in output.iterdir() if entry.name not in EXPORT_FILES)
    if extra:
        raise FileExistsError(
            f"output_dir: {output} holds an export and other entries ({', '.join(extra)}); "
            "not replacing it: move them out or choose another directory"
        )
    if any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"output_dir: {output} holds an export already; pass overwrite=True to replace it")


def _versions() -> dict[str, str]:
    versions = {"mgll_loss": __version__, "torch": torch.__version__}
    for name in ("transformers", "open_clip"):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) or getattr(getattr(module, "version", None), "__version__", None)
        if version:
            versions[name] = str(version)
    return versions


def _metadata(
    tower: VisionTower,
    config: dict[str, Any],
    read_act: str,
    preprocessing: ImagePreprocessing,
    source: Mapping[str, Any] | str | None,
    check: ExportCheck | None,
) -> dict[str, Any]:
    return {
        "source": dict(source) if isinstance(source, Mapping) else source,
        "tower": tower.describe(),
        "hidden_act": config["hidden_act"],
        "hidden_act_of_the_model": read_act,
        "layer_norm_eps": config["layer_norm_eps"],
        "vision_config": {
            key: config[key]
            for key in (
                "hidden_size",
                "intermediate_size",
                "projection_dim",
                "num_hidden_layers",
                "num_attention_heads",
                "num_channels",
                "image_size",
                "patch_size",
            )
        },
        "dtype": "float32",
        "preprocessing": preprocessing.to_dict(),
        "check": None if check is None else check.to_dict(),
        "versions": _versions(),
    }
