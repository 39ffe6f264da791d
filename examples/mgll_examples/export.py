"""Export a pretrained image tower as a Hugging Face ``CLIPVisionModel`` directory, for a multimodal LLM.

Reads this project's ``last.pt``, the MGLL authors' checkpoint, an ``open_clip_train`` checkpoint
(``--model`` names its architecture) or a Hugging Face ``CLIPModel`` directory (``MGLLTrainer``), and
calls :func:`mgll_loss.export.export_vision_tower`. The preprocessing written is the one the
checkpoint was trained with: the examples' transforms (resize to the square input without a crop,
bilinear, the model's mean/std), the authors' (ImageNet mean/std, 224 px), open_clip's
``preprocess_cfg`` for an ``open_clip_train`` checkpoint, or the directory's own
``preprocessor_config.json``; ``--mean``/``--std``/``--resample``/``--resize-mode`` override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgll_loss.export import (
    RESAMPLING,
    RESIZE_MODES,
    ExportCheckError,
    ImagePreprocessing,
    export_vision_tower,
    load_open_clip_checkpoint,
    read_checkpoint,
    vision_state_dict,
)

from .checkpoint_import import authors_model
from .errors import ExampleError
from .model import TINY, TINY_VIT, build_model

#: The authors' transforms (their main_pretrain.py and models/pretrain.py): resize to 512 x 512 (bicubic),
#: normalise with the ImageNet mean and std; the model then resizes to 224 x 224 (bilinear).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export_vision_tower.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="last.pt, an authors' or open_clip_train checkpoint, or a Hugging Face CLIPModel directory",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="the directory to write (must not exist)")
    parser.add_argument(
        "--model",
        help="open_clip architecture (default: last.pt's; authors' format: ViT-L-14, or ViT-L-14-quickgelu for "
        "checkpoints of open_clip < 2.29; required for open_clip_train checkpoints)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output-dir")
    parser.add_argument("--no-check", action="store_true", help="skip reloading and comparing every output")
    parser.add_argument("--atol", type=float, default=1e-5, help="the check's largest absolute difference")
    parser.add_argument("--hidden-act", help="override the activation read from the model (diagnosis only)")
    prep = parser.add_argument_group("preprocessing overrides (default: the checkpoint's training transforms)")
    prep.add_argument("--mean", help="three comma-separated channel means, e.g. 0.485,0.456,0.406")
    prep.add_argument("--std", help="three comma-separated channel standard deviations")
    prep.add_argument("--resample", choices=RESAMPLING)
    prep.add_argument("--resize-mode", choices=RESIZE_MODES)
    return parser


def _floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise ExampleError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _examples_transforms(bundle: Any, source: str) -> ImagePreprocessing:
    return ImagePreprocessing(
        size=bundle.image_size,
        mean=tuple(bundle.mean),
        std=tuple(bundle.std),
        resample="bilinear",
        resize_mode="squash",
        source=source,
    )


def _from_checkpoint(args: argparse.Namespace) -> tuple[Any, ImagePreprocessing, dict[str, Any]]:
    try:
        payload = read_checkpoint(args.checkpoint)
        _, layout = vision_state_dict(payload)
    except (FileNotFoundError, ValueError) as error:
        raise ExampleError(f"--checkpoint {args.checkpoint}: {error}") from None
    note = None
    if args.model:
        name = args.model
    elif layout == "mgll-loss examples":
        name = payload["config"]["model"]
    elif layout == "MGLL authors":
        name, note = authors_model(payload["model"])
    else:
        raise ExampleError(
            f"--model: required for a checkpoint of layout {layout!r}: the open_clip architecture it was trained with "
            "(e.g. ViT-B-16, or ViT-B-16-quickgelu: the activation is in no weight)"
        )
    bundle = build_model(name)
    try:
        load_open_clip_checkpoint(bundle.model, payload)
    except ValueError as error:
        hint = (
            f"the given --model {name} does not match the checkpoint"
            if args.model
            else f"pass the architecture it was trained with as --model (not {name})"
        )
        raise ExampleError(f"--checkpoint {args.checkpoint}: {error}; {hint}") from None
    if layout == "mgll-loss examples":
        preprocessing = _examples_transforms(bundle, "the examples' transforms (mgll_examples/data/images.py)")
    elif layout == "MGLL authors":
        preprocessing = ImagePreprocessing(
            size=bundle.image_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resample="bilinear",
            resize_mode="squash",
            source="the MGLL authors' transforms (512 px bicubic, ImageNet mean/std, then 224 px bilinear in "
            "their model): one squash resize to the input size, bilinear",
        )
    elif getattr(bundle.model.visual, "preprocess_cfg", None):
        preprocessing = ImagePreprocessing.from_open_clip(bundle.model)
    else:
        preprocessing = _examples_transforms(bundle, "the examples' transforms (mgll_examples/data/images.py)")
    source = {"checkpoint": str(args.checkpoint), "layout": layout, "model": name, "model_reason": note}
    return bundle.model, preprocessing, source


def _from_directory(args: argparse.Namespace) -> tuple[Any, ImagePreprocessing | None, dict[str, Any]]:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(args.checkpoint)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExampleError(f"--checkpoint {args.checkpoint}: not a readable Hugging Face directory: {first}") from None
    classes = {"clip": transformers.CLIPModel, "clip_vision_model": transformers.CLIPVisionModelWithProjection}
    if config.model_type not in classes:
        raise ExampleError(
            f"--checkpoint {args.checkpoint}: a {config.model_type} model; expected a CLIPModel (clip) directory"
        )
    model = classes[config.model_type].from_pretrained(args.checkpoint)
    preprocessing = None
    if (args.checkpoint / "preprocessor_config.json").is_file():
        processor = transformers.CLIPImageProcessor.from_pretrained(args.checkpoint)
        source = f"{args.checkpoint / 'preprocessor_config.json'}"
        try:
            preprocessing = ImagePreprocessing.from_image_processor(processor, source=source)
        except ValueError as error:
            raise ExampleError(f"--checkpoint {args.checkpoint}: {error}") from None
    return model, preprocessing, {"checkpoint": str(args.checkpoint), "layout": "Hugging Face directory"}


def _override(args: argparse.Namespace, preprocessing: ImagePreprocessing | None, size: int) -> ImagePreprocessing:
    changes = {
        key: value
        for key, value in (
            ("mean", _floats("--mean", args.mean)),
            ("std", _floats("--std", args.std)),
            ("resample", args.resample),
            ("resize_mode", args.resize_mode),
        )
        if value is not None
    }
    if preprocessing is None:
        missing = [
            f"--{key.replace('_', '-')}" for key in ("mean", "std", "resample", "resize_mode") if key not in changes
        ]
        if missing:
            raise ExampleError(
                f"--checkpoint {args.checkpoint}: no preprocessor_config.json; pass {', '.join(missing)} "
                "(the transforms the model was trained with)"
            )
        return ImagePreprocessing(size=size, source="command-line flags", **changes)
    if not changes:
        return preprocessing
    return dataclasses.replace(preprocessing, **changes, source=f"{preprocessing.source}, overridden by flags")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export; returns the metadata written."""
    if args.checkpoint.is_dir():
        model, preprocessing, source = _from_directory(args)
        size = int(
            model.config.vision_config.image_size if hasattr(model.config, "vision_config") else model.config.image_size
        )
    else:
        model, preprocessing, source = _from_checkpoint(args)
        size = preprocessing.size
    try:
        preprocessing = _override(args, preprocessing, size)
        report = export_vision_tower(
            model,
            args.output_dir,
            preprocessing=preprocessing,
            source=source,
            check=not args.no_check,
            atol=args.atol,
            overwrite=args.overwrite,
            hidden_act=args.hidden_act,
        )
    except ValueError as error:
        hint = ""
        if source.get("model") == TINY:
            hint = f" (the examples' '{TINY}' model; pretrain with --model {TINY_VIT} for an exportable ViT)"
        raise ExampleError(f"{error}{hint}") from None
    except FileExistsError as error:
        raise ExampleError(f"--output-dir: {str(error).replace('pass overwrite=True', 'pass --overwrite')}") from None
    metadata = report.metadata
    config = metadata["vision_config"]
    prep = metadata["preprocessing"]
    print(
        f"exported {source.get('layout')} image tower -> {report.output_dir}\n"
        f"  {config['num_hidden_layers']} layers, width {config['hidden_size']}, "
        f"{config['num_attention_heads']} heads, "
        f"{config['image_size']} px / patch {config['patch_size']}, hidden_act {metadata['hidden_act']}, "
        f"layer_norm_eps {metadata['layer_norm_eps']:g}, projection_dim {config['projection_dim']}\n"
        f"  preprocessing: {prep['size']} px, {prep['resize_mode']} resize, {prep['resample']}, mean {prep['mean']}, "
        f"std {prep['std']} ({prep['source']})\n"
        f"  {report.check.summary() if report.check else 'check skipped (--no-check)'}",
        flush=True,
    )
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    """``examples/export_vision_tower.py``; a user error prints one line and returns 2, a failed check 1."""
    try:
        run(build_parser().parse_args(argv))
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExportCheckError as error:
        print(f"error: the export does not reproduce the model, nothing written: {error}", file=sys.stderr)
        return 1
    return 0
