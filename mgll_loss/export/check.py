"""The check after an export: reload the directory with transformers and compare every output with the source."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..adapters.base import require
from .tower import TowerOutputs, VisionTower

__all__ = ["ExportCheck", "ExportCheckError", "compare_with_source", "sample_pixels"]


@dataclass
class ExportCheck:
    """The largest absolute difference of each output of the reloaded model from the source's.

    Keys of ``max_abs_diff``: ``hidden_states[i]`` for i = 0..L (``CLIPVisionModel``),
    ``pooler_output`` (``CLIPVisionModel``) and ``image_embeds`` (``CLIPVisionModelWithProjection``).
    ``missing_keys``: weights each class did not find in the directory (must be none).
    """

    max_abs_diff: dict[str, float]
    atol: float
    missing_keys: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every difference within ``atol`` and no weight missing."""
        return all(d <= self.atol for d in self.max_abs_diff.values()) and not any(self.missing_keys.values())

    def summary(self) -> str:
        """One line: passed or failed, the worst output, and the missing weights if any."""
        worst = max(self.max_abs_diff, key=lambda name: self.max_abs_diff[name])
        state = "passed" if self.passed else "FAILED"
        failing = [name for name, diff in self.max_abs_diff.items() if diff > self.atol]
        line = (
            f"check {state}: {len(self.max_abs_diff)} outputs compared in float32, largest difference "
            f"{self.max_abs_diff[worst]:.2e} ({worst}), atol {self.atol:.0e}"
        )
        if failing:
            line += f"; over atol: {', '.join(failing)}"
        missing = {name: keys for name, keys in self.missing_keys.items() if keys}
        if missing:
            line += f"; missing weights: {missing}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "max_abs_diff": self.max_abs_diff,
            "missing_keys": self.missing_keys,
        }


class ExportCheckError(RuntimeError):
    """The exported directory does not reproduce the source model (``check`` holds the differences)."""

    def __init__(self, check: ExportCheck, hint: str = "") -> None:
        super().__init__(check.summary() + hint)
        self.check = check


def sample_pixels(num_channels: int, image_size: int, batch_size: int = 2, seed: int = 0) -> Tensor:
    """Standard-normal pixel values [B, C, S, S] (normalised images have about this range), seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, num_channels, image_size, image_size, generator=generator)


def _max_diff(actual: Tensor, expected: Tensor) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    return float((actual.float() - expected.float()).abs().max())


@torch.no_grad()
def compare_with_source(
    tower: VisionTower, directory: str | os.PathLike[str], pixel_values: Tensor, atol: float
) -> ExportCheck:
    """Load ``directory`` as ``CLIPVisionModel`` and ``CLIPVisionModelWithProjection`` and compare with ``tower``."""
    transformers = require("transformers", "hf", "the export check")
    expected = tower.reference(pixel_values)
    with quiet_transformers(transformers):
        return _compare(transformers, expected, directory, pixel_values, atol)


@contextlib.contextmanager
def quiet_transformers(transformers: Any) -> Iterator[None]:
    """No progress bars and no load report while reloading (``visual_projection`` is unused by
    ``CLIPVisionModel`` by design: the check reports what matters)."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _compare(
    transformers: Any, expected: TowerOutputs, directory: str | os.PathLike[str], pixel_values: Tensor, atol: float
) -> ExportCheck:
    diffs: dict[str, float] = {}
    missing: dict[str, list[str]] = {}
    plain, info = transformers.CLIPVisionModel.from_pretrained(directory, output_loading_info=True)
    missing["CLIPVisionModel"] = list(info["missing_keys"])
    output = plain.eval()(pixel_values=pixel_values, output_hidden_states=True)
    if len(output.hidden_states) != len(expected.hidden_states):
        diffs["hidden_states (count)"] = float("inf")
    for i, (actual, reference) in enumerate(zip(output.hidden_states, expected.hidden_states, strict=False)):
        diffs[f"hidden_states[{i}]"] = _max_diff(actual, reference)
    diffs["pooler_output"] = _max_diff(output.pooler_output, expected.pooled)
    projected, info = transformers.CLIPVisionModelWithProjection.from_pretrained(directory, output_loading_info=True)
    missing["CLIPVisionModelWithProjection"] = list(info["missing_keys"])
    diffs["image_embeds"] = _max_diff(projected.eval()(pixel_values=pixel_values).image_embeds, expected.projected)
    return ExportCheck(diffs, atol, missing)
