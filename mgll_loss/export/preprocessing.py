"""The image preprocessing a vision tower was trained with, written as a ``preprocessor_config.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..adapters.base import require

__all__ = ["ImagePreprocessing", "RESIZE_MODES", "RESAMPLING"]

#: ``"squash"``: resize to ``size`` x ``size`` ignoring the aspect ratio, no crop (this project's
#: examples); ``"shortest"``: resize the shortest edge to ``size``, then centre-crop (CLIP, open_clip).
RESIZE_MODES = ("squash", "shortest")
#: Resampling filters, by their PIL names (``CLIPImageProcessor`` stores ``PIL.Image.Resampling`` values).
RESAMPLING = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How images were turned into pixel values during training: size, resize, mean and std.

    Nothing has a default: a wrong mean or size silently shifts every feature an MLLM sees, so the
    values come from the training transforms (:meth:`from_open_clip` for a model built by
    ``open_clip.create_model``; the examples pass their own). Pixels are scaled to [0, 1], then
    normalised: :math:`x' = (x / 255 - \\mu) / \\sigma` per channel.

    Args:
        size: the side of the square input, in pixels.
        mean: the per-channel mean subtracted after scaling to [0, 1].
        std: the per-channel standard deviation divided by.
        resample: the resampling filter (a :data:`RESAMPLING` name, e.g. ``"bicubic"``).
        resize_mode: ``"squash"`` or ``"shortest"`` (see :data:`RESIZE_MODES`).
        source: where these values come from, recorded in the export's metadata.

    Raises:
        ValueError: a size below 1, a non-positive std, mean and std of different lengths, an
            unknown ``resample`` or ``resize_mode``.

    Example:
        >>> prep = ImagePreprocessing(size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        ...                           resample="bilinear", resize_mode="squash", source="my transforms")
        >>> prep.image_processor_kwargs()["size"], prep.image_processor_kwargs()["do_center_crop"]
        ({'height': 224, 'width': 224}, False)
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: str
    resize_mode: str
    source: str

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size: expected a positive int (the square input's side), got {self.size!r}")
        mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(mean) == 0 or len(mean) != len(std):
            raise ValueError(f"mean, std: expected one value per channel each, got {list(mean)} and {list(std)}")
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"mean, std: expected finite means and positive stds, got {list(mean)} and {list(std)}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample: expected one of {RESAMPLING}, got {self.resample!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode: expected one of {RESIZE_MODES}, got {self.resize_mode!r}")

    @classmethod
    def from_open_clip(cls, model: Any) -> ImagePreprocessing:
        """The preprocessing open_clip's transforms apply for ``model`` (its ``preprocess_cfg``).

        ``open_clip.create_model`` / ``create_model_and_transforms`` record it on the model (what
        ``open_clip_train`` trained with); a model built directly (``open_clip.CLIP(...)``) has none.

        Raises:
            ValueError: the model carries no preprocessing, or one ``CLIPImageProcessor`` cannot
                express (``resize_mode="longest"``: padding; ``interpolation="random"``).
        """
        open_clip = require("open_clip", "open_clip", "ImagePreprocessing.from_open_clip")
        config = dict(open_clip.get_model_preprocess_cfg(model))
        if not config.get("mean") or not config.get("std") or not config.get("size"):
            raise ValueError(
                "model: carries no open_clip preprocessing (mean/std/size; it was not built by "
                "open_clip.create_model): pass ImagePreprocessing(...) with the values it was trained with"
            )
        size = config["size"]
        sizes = (size, size) if isinstance(size, int) else tuple(size)
        if len(set(sizes)) != 1:
            raise ValueError(f"model: open_clip preprocessing size {sizes} is not square; a CLIPVisionModel is")
        mode = config.get("resize_mode", "shortest")
        if mode not in RESIZE_MODES:
            raise ValueError(
                f"model: open_clip resize_mode {mode!r} (resize the longest edge and pad) has no CLIPImageProcessor "
                "equivalent; pass ImagePreprocessing(...) explicitly"
            )
        return cls(
            size=int(sizes[0]),
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            resample=str(config.get("interpolation", "bicubic")),
            resize_mode=mode,
            source="open_clip preprocess_cfg of the model",
        )

    @classmethod
    def from_image_processor(cls, processor: Any, source: str) -> ImagePreprocessing:
        """The preprocessing of a Hugging Face ``CLIPImageProcessor`` (e.g. the one a model was trained with).

        Raises:
            ValueError: a size without ``shortest_edge`` or square ``height``/``width``, a
                centre crop of another size than the resize, or ``do_resize``, ``do_rescale``
                (with ``rescale_factor`` 1/255) or ``do_normalize`` off: an export writes them on,
                so such a processor is refused rather than changed.
        """
        changed = {
            name: getattr(processor, name, default)
            for name, default in (("do_resize", True), ("do_rescale", True), ("do_normalize", True))
            if getattr(processor, name, default) is not True
        }
        factor = getattr(processor, "rescale_factor", 1 / 255)
        if not math.isclose(float(factor), 1 / 255, rel_tol=1e-9):
            changed["rescale_factor"] = factor
        if changed:
            settings = ", ".join(f"{name}={value!r}" for name, value in changed.items())
            raise ValueError(
                f"processor: {settings} is not supported (an export writes do_resize, do_rescale with "
                "rescale_factor 1/255 and do_normalize on); pass ImagePreprocessing(...) for what it does"
            )
        size = dict(_items(processor.size))
        crop = dict(_items(getattr(processor, "crop_size", None) or {}))
        cropped = bool(getattr(processor, "do_center_crop", False))
        if size.get("shortest_edge"):
            side, mode = int(size["shortest_edge"]), "shortest"
            if not cropped or crop.get("height") != side or crop.get("width") != side:
                raise ValueError(
                    f"processor: shortest_edge {side} expects a centre crop of {side}x{side}, got "
                    f"do_center_crop={cropped} crop_size={crop}"
                )
        elif size.get("height") and size.get("height") == size.get("width") and not cropped:
            side, mode = int(size["height"]), "squash"
        else:
            raise ValueError(
                f"processor: expected size shortest_edge (with a centre crop) or a square height/width without "
                f"a crop, got size={size} do_center_crop={cropped} crop_size={crop}"
            )
        return cls(
            size=side,
            mean=tuple(processor.image_mean),
            std=tuple(processor.image_std),
            resample=_resample_name(processor.resample),
            resize_mode=mode,
            source=source,
        )

    def image_processor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``transformers.CLIPImageProcessor`` that reproduce this preprocessing.

        ``crop_size`` is the input size in both modes (LLaVA reads it even without a crop).
        """
        square = {"height": self.size, "width": self.size}
        return {
            "do_resize": True,
            "size": {"shortest_edge": self.size} if self.resize_mode == "shortest" else square,
            "resample": _resample_value(self.resample),
            "do_center_crop": self.resize_mode == "shortest",
            "crop_size": square,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (for the metadata file)."""
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values


def _items(value: Any) -> Sequence[tuple[str, Any]]:
    """Key/value pairs of a size dict (transformers >= 5 wraps it in a ``SizeDict``)."""
    if isinstance(value, Mapping):
        return list(value.items())
    return [(key, getattr(value, key)) for key in ("shortest_edge", "height", "width") if hasattr(value, key)]


def _resampling() -> Any:
    image = require("PIL.Image", "hf", "ImagePreprocessing")
    return image.Resampling


def _resample_value(name: str) -> int:
    return int(_resampling()[name.upper()])


def _resample_name(value: Any) -> str:
    resampling = _resampling()
    try:
        return str(resampling(int(value)).name.lower())
    except (TypeError, ValueError):
        raise ValueError(f"processor.resample: expected a PIL resampling filter, got {value!r}") from None
