"""Writing synthetic data sets in the real MGLL-Fundus / MGLL-Xray layouts, for demos and tests.

The images make their labels visible (see :mod:`.synthetic_fundus` and :mod:`.synthetic_xray`), so a
small CLIP learns them in minutes. A data dir gets ``train.json``, ``test.json`` (the same
distribution), ``class_prompts.json`` (each class's prompt is the class name, the form of the
training captions) and ``images/``: fundus ``<id>.npz`` (uint8 RGB under ``"image"``, ``ImageID``
without extension) and X-ray ``<id>.png`` (grayscale, ``ImageID`` ``"images/<id>.png"``).
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ExampleError
from .formats import load_fundus, load_xray
from .records import Dataset
from .synthetic_fundus import fundus_sample
from .synthetic_xray import xray_sample

__all__ = ["write_synthetic_fundus", "write_synthetic_xray", "ensure_synthetic"]

_MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class _Kind:
    """How one kind of synthetic data set is drawn, stored and read back."""

    sample: Callable[[np.random.Generator, int], tuple[dict[str, str], np.ndarray]]
    suffix: str  # image file type
    image_id: Callable[[str], str]  # file stem -> the record's ImageID
    load: Callable[[Path], Dataset]


_KINDS: dict[str, _Kind] = {
    "fundus": _Kind(fundus_sample, ".npz", lambda stem: stem, load_fundus),
    "xray": _Kind(xray_sample, ".png", lambda stem: f"images/{stem}.png", load_xray),
}


def _save_image(path: Path, pixels: np.ndarray) -> None:
    if path.suffix == ".npz":
        np.savez_compressed(path, image=pixels)
    else:
        Image.fromarray(pixels).save(path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _write(kind: str, data_dir: Path, num_train: int, num_test: int, image_size: int, seed: int) -> Path:
    limits = (("num_train", num_train, 1), ("num_test", num_test, 1), ("image_size", image_size, _MIN_IMAGE_SIZE))
    for name, value, least in limits:
        if value < least:
            raise ExampleError(f"synthetic {kind} data: {name} must be at least {least}, got {value}")
    spec = _KINDS[kind]
    data_dir = Path(data_dir)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        records = []
        for index in range(count):
            fields, pixels = spec.sample(rng, image_size)
            stem = f"{kind}_{split}_{index:05d}"
            _save_image(data_dir / "images" / f"{stem}{spec.suffix}", pixels)
            records.append({"ImageID": spec.image_id(stem), **fields})
        _write_json(data_dir / f"{split}.json", records)
    dataset = spec.load(data_dir)
    prompts = {level.name: {name: name for name in dataset.classes(i)} for i, level in enumerate(dataset.levels)}
    _write_json(data_dir / "class_prompts.json", prompts)
    return data_dir


def write_synthetic_fundus(
    data_dir: Path, num_train: int = 600, num_test: int = 200, image_size: int = 64, seed: int = 0
) -> Path:
    """Write a synthetic MGLL-Fundus data dir (deterministic for ``seed``); returns ``data_dir``."""
    return _write("fundus", data_dir, num_train, num_test, image_size, seed)


def write_synthetic_xray(
    data_dir: Path, num_train: int = 600, num_test: int = 200, image_size: int = 64, seed: int = 0
) -> Path:
    """Write a synthetic MGLL-Xray data dir (deterministic for ``seed``); returns ``data_dir``."""
    return _write("xray", data_dir, num_train, num_test, image_size, seed)


_WRITERS: dict[str, Callable[..., Path]] = {"fundus": write_synthetic_fundus, "xray": write_synthetic_xray}
_MANIFEST = "synthetic.json"  # what a synthetic set was written with


def ensure_synthetic(kind: str, data_dir: Path, **kwargs: Any) -> Path:
    """``data_dir`` holding a synthetic ``kind`` ("fundus" or "xray") data set, written only if it
    has no ``train.json`` yet; ``kwargs`` go to the writer. It is written into a temporary sibling
    dir that is then renamed, so an interrupted run leaves no half-written set behind. The set
    records what it was written with (``synthetic.json``); an existing set written with other
    arguments is refused rather than silently reused."""
    if kind not in _WRITERS:
        raise ExampleError(f"unknown synthetic data kind {kind!r}; valid kinds: {', '.join(_WRITERS)}")
    data_dir = Path(data_dir)
    bound = inspect.signature(_WRITERS[kind]).bind(data_dir, **kwargs)
    bound.apply_defaults()
    spec = {"kind": kind, **{name: value for name, value in bound.arguments.items() if name != "data_dir"}}
    if (data_dir / "train.json").exists():
        check_written_with(data_dir / _MANIFEST, spec, data_dir)
        return data_dir
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise ExampleError(
            f"--data-dir {data_dir}: has no train.json and is not an empty directory; not writing into it"
        )
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.partial-", dir=data_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the data set is not
        _WRITERS[kind](staging, **kwargs)
        _write_json(staging / _MANIFEST, spec)
        try:
            staging.replace(data_dir)  # also replaces an empty data_dir
        except OSError:
            if not (data_dir / "train.json").exists():  # else another process has just written it
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return data_dir


def check_written_with(path: Path, spec: dict[str, Any], data_dir: Path) -> None:
    """Raise unless the manifest ``path`` of a synthetic set in ``data_dir`` records ``spec`` (no manifest: kept)."""
    if not path.exists():
        return
    written = json.loads(path.read_text(encoding="utf-8"))
    if written != spec:
        differ = ", ".join(f"{k}={written.get(k)!r} (asked {v!r})" for k, v in spec.items() if written.get(k) != v)
        raise ExampleError(
            f"--data-dir {data_dir}: holds a synthetic set written with {differ} (from --synthetic-size and "
            "--seed); pass another --data-dir, or delete this one to write it again"
        )
