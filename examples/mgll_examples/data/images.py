"""Reading images as uint8 RGB arrays, and the torch dataset / collate that turn samples into batches.

A bad image never raises inside a DataLoader worker: :class:`ImageTextDataset` returns its message
instead, and :func:`collate` drops the sample and keeps the message in :attr:`Batch.errors`, for the
training loop (main process) to report or count.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import ExampleError
from .records import IMAGE_SUFFIXES, Dataset, Sample

__all__ = ["read_image", "check_image_files", "ImageTextDataset", "Batch", "collate"]

Item = tuple[int, Tensor | None, str | None]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_npz(path: Path) -> np.ndarray:
    if path.is_file() and not zipfile.is_zipfile(path):  # np.load would try to unpickle it
        raise ExampleError(f"{path}: cannot read .npz (not a zip archive: corrupt or truncated)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ExampleError(f"{path}: not an .npz archive (it holds a single array)")
        with archive:
            if "image" not in archive.files:
                raise ExampleError(
                    f"{path}: no 'image' array in the .npz (it has: {', '.join(archive.files) or 'nothing'})"
                )
            return archive["image"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ExampleError(f"{path}: cannot read .npz ({_one_line(error)})") from None


def _read_pil(path: Path) -> np.ndarray:
    """PNG/JPEG pixels; high-bit-depth grayscale (16-bit PNG) is min-max scaled to uint8."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I"):
                pixels = np.asarray(image, dtype=np.float64)
                low, high = pixels.min(), pixels.max()
                return np.round((pixels - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ExampleError(f"{path}: cannot read image ({_one_line(error)})") from None


def _as_rgb(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.dtype != np.uint8:
        raise ExampleError(f"{path}: image has dtype {pixels.dtype}, expected uint8")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ExampleError(
            f"{path}: image has shape {list(pixels.shape)}, expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ExampleError(f"{path}: image is empty (shape {list(pixels.shape)})")
    rgb = np.broadcast_to(pixels, pixels.shape[:2] + (3,)) if pixels.shape[2] == 1 else pixels[:, :, :3]
    return np.require(rgb, requirements=["C", "W"])


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as uint8 [H, W, 3]: ``.npz`` (uint8 array under ``"image"``), ``.png``,
    ``.jpg`` or ``.jpeg``; grayscale is repeated over the channels and alpha dropped."""
    path = Path(path)
    if not path.is_file():
        raise ExampleError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ExampleError(
            f"{path}: unsupported image type {suffix or '(none)'!r}, expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    pixels = _read_npz(path) if suffix == ".npz" else _read_pil(path)
    return _as_rgb(pixels, path)


def check_image_files(dataset: Dataset, skip_missing: bool, shown: int = 3) -> Dataset:
    """``dataset`` after one pass of existence checks over every sample's image file.

    A missing file raises, with the count and the first ``shown`` missing samples, before any
    training; with ``skip_missing`` (``--skip-bad-samples``) the samples are left out instead and
    counted in ``missing_images``. Files that exist but cannot be read are found later, by the loader.
    """
    missing = [sample for sample in dataset.train + dataset.test if not sample.image.is_file()]
    if not missing:
        return dataset
    if not skip_missing:
        total = len(dataset.train) + len(dataset.test)
        first = ", ".join(f"{sample.source}: {sample.image}" for sample in missing[:shown])
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise ExampleError(
            f"{len(missing)} of {total} image files do not exist: {first}{more} (--skip-bad-samples leaves them out)"
        )
    absent = {id(sample) for sample in missing}
    train = [sample for sample in dataset.train if id(sample) not in absent]
    test = [sample for sample in dataset.test if id(sample) not in absent]
    if not train or not test:
        split = "training" if not train else "held-out"
        raise ExampleError(f"no image file of the {split} split exists (e.g. {missing[0].source}: {missing[0].image})")
    return replace(dataset, train=train, test=test, missing_images=dataset.missing_images + len(missing))


class ImageTextDataset(torch.utils.data.Dataset):
    """The samples' images as normalised float32 [3, image_size, image_size] tensors.

    Item ``i`` is ``(i, image, None)``, or ``(i, None, message)`` when the image cannot be read.
    Deterministic: training augmentation runs on whole batches in the main process
    (``mgll_examples.pipeline.augment``), with a generator a checkpoint can restore.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, mean: Sequence[float], std: Sequence[float]):
        if image_size < 1:
            raise ExampleError(f"image size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ExampleError(f"need 3 channel means and 3 positive stds, got mean={list(mean)} std={list(std)}")
        self.samples = list(samples)
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _tensor(self, pixels: np.ndarray) -> Tensor:
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        size = (self.image_size, self.image_size)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        return (image.clamp_(0.0, 1.0) - self.mean) / self.std

    def __getitem__(self, index: int) -> Item:
        index = int(index)
        sample = self.samples[index]
        try:
            return index, self._tensor(read_image(sample.image)), None
        except ExampleError as error:
            return index, None, f"{sample.source}: {error}"
        except Exception as error:  # anything else must not become a traceback in a worker process
            return (
                index,
                None,
                f"{sample.source}: {sample.image}: cannot load image ({type(error).__name__}: {_one_line(error)})",
            )


@dataclass
class Batch:
    """The good samples of a batch, and the messages of the bad ones.

    ``indices`` int64 [b] (dataset indices), ``images`` float32 [b, 3, S, S]; when no sample of the
    batch is good, ``images`` is [0, 3, 0, 0] (the size is unknown).
    """

    indices: Tensor
    images: Tensor
    errors: list[str]

    def pin_memory(self) -> Batch:
        """Page-locked copy, called by ``DataLoader(pin_memory=True)``."""
        return Batch(self.indices.pin_memory(), self.images.pin_memory(), self.errors)


def collate(batch: Sequence[Item]) -> Batch:
    """Stack the good items of ``batch`` (from :class:`ImageTextDataset`); keep the bad ones' messages."""
    good = [(index, image) for index, image, _ in batch if image is not None]
    return Batch(
        indices=torch.tensor([index for index, _ in good], dtype=torch.int64),
        images=torch.stack([image for _, image in good]) if good else torch.zeros(0, 3, 0, 0),
        errors=[error or f"item {index}: no image" for index, image, error in batch if image is None],
    )
