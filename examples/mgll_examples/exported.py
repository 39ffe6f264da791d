"""An exported vision-tower directory (``examples/export_vision_tower.py``) as a model the downstream example probes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mgll_loss.export import METADATA_FILE, ImagePreprocessing

from .errors import ExampleError
from .model import ModelBundle

__all__ = ["ExportedTower", "load_exported"]


class ExportedTower(nn.Module):
    """A ``CLIPVisionModelWithProjection`` with open_clip's ``encode_image`` and ``visual.output_dim``."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.visual = tower
        self.visual.output_dim = int(tower.config.projection_dim)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.visual(pixel_values=images).image_embeds


def _no_text(texts: Any) -> Tensor:
    raise ExampleError("an exported vision tower has no text tower")


def load_exported(path: Path) -> tuple[ModelBundle, dict[str, Any]]:
    """The tower in ``path`` with the size, mean and std of its ``preprocessor_config.json``, and its metadata."""
    import transformers

    if not (path / "config.json").is_file() or not (path / "preprocessor_config.json").is_file():
        raise ExampleError(f"--checkpoint {path}: a directory without config.json and preprocessor_config.json")
    tower = transformers.CLIPVisionModelWithProjection.from_pretrained(path)
    prep = ImagePreprocessing.from_image_processor(transformers.CLIPImageProcessor.from_pretrained(path), str(path))
    if prep.resize_mode != "squash":
        print(
            f"note: {path} was trained with a {prep.resize_mode}-edge resize and centre crop; the examples resize "
            "the whole image to the square input",
            file=sys.stderr,
        )
    metadata_file = path / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    bundle = ModelBundle(ExportedTower(tower), _no_text, prep.size, prep.mean, prep.std)
    return bundle, {"export": metadata.get("source"), "check": metadata.get("check")}
