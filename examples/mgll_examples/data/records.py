"""What a loaded data set is: text levels, image-text samples, and the train/test split pair.

A *level* is one granularity of text (e.g. ``normality`` < ``category`` < ``description``); every
sample has one caption per level. A multi-label level (one with a ``separator``) holds several
class names in one caption, e.g. ``"Glaucoma, Mild Non-Proliferative Diabetic Retinopathy"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExampleError

__all__ = ["IMAGE_SUFFIXES", "Level", "Sample", "Dataset"]

#: The image file types the loader reads, in the order an ``ImageID`` without one tries them.
IMAGE_SUFFIXES = (".npz", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Level:
    """One text granularity: its ``name`` and, for a multi-label level, the class ``separator``."""

    name: str
    separator: str | None

    def labels(self, text: str) -> list[str]:
        """The class names in one caption of this level (split on the separator, stripped, no empties)."""
        if self.separator is None:
            return [text.strip()]
        return [part.strip() for part in text.split(self.separator) if part.strip()]


@dataclass(frozen=True)
class Sample:
    """One image with its captions; ``source`` (e.g. ``"train.json[12]"``) locates it for messages."""

    image: Path
    texts: tuple[str, ...]
    source: str


@dataclass
class Dataset:
    """A loaded train/test pair; ``prompts`` maps level name -> class name -> zero-shot prompt text;
    ``missing_images`` counts the samples left out because their image file does not exist."""

    levels: tuple[Level, ...]
    train: list[Sample]
    test: list[Sample]
    prompts: dict[str, dict[str, str]]
    missing_images: int = 0

    def classes(self, level: int) -> list[str]:
        """The sorted class names of level ``level`` over the train and test samples."""
        spec = self.levels[level]
        return sorted({label for sample in self.train + self.test for label in spec.labels(sample.texts[level])})

    def class_matrix(self, samples: Sequence[Sample], level: int) -> np.ndarray:
        """Multi-hot class membership, bool [len(samples), len(classes(level))]."""
        spec = self.levels[level]
        column = {name: j for j, name in enumerate(self.classes(level))}
        matrix = np.zeros((len(samples), len(column)), dtype=bool)
        for i, sample in enumerate(samples):
            for label in spec.labels(sample.texts[level]):
                if label not in column:
                    raise ExampleError(
                        f"{sample.source}: class {label!r} of level {spec.name!r} is not in this data set"
                    )
                matrix[i, column[label]] = True
        return matrix
