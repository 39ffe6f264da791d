"""Synthetic MGLL-Xray-style samples: a grayscale chest radiograph whose look shows its record fields.

Frontal views (PA, AP, AP PORTABLE) show two dark lung fields either side of a bright mediastinum;
AP views tend to have a wider heart and scapula shadows over the lungs, and portable ones tubes and
ECG lead rings. A LATERAL view shows one lung field, the heart in front and the spine behind. ``CR``
images tend to have lower contrast, a lifted black level, and blurred, coarser noise than ``DX`` ones.

As in real collections the classes overlap, so that no model reaches a perfect score and losses can
be told apart: the exposure of an image (CR-like to DX-like) and the projection of a frontal view
(PA-like to AP-like: heart width, scapulae) are drawn from ranges that two classes share over their
middle :data:`OVERLAP` (a classifier that knew the drawn value exactly would reach a one-vs-rest
AUC of about 0.9), and devices show on 85% of the portable views and on 15% of the other AP ones.
"""

from __future__ import annotations

import numpy as np

from .drawing import Grid, blur, ellipses, paint, polylines, rings, to_uint8

__all__ = ["XRAY_MODALITIES", "XRAY_STUDIES", "xray_sample"]

XRAY_MODALITIES = ("CR", "DX")
#: series_description -> the study_description_0 it belongs to.
XRAY_STUDIES = {
    "AP PORTABLE": "CHEST 1 VIEW PORTABLE",
    "AP": "CHEST AP",
    "PA": "CHEST PA AND LATERAL",
    "LATERAL": "CHEST PA AND LATERAL",
}

_SOFT_TISSUE, _LUNG, _MEDIASTINUM, _BONE, _DEVICE = 0.45, 0.12, 0.62, 0.75, 0.97
#: (contrast, black level, noise std, blur weight) of the most CR-like and the most DX-like exposure.
_EXPOSURE_RANGE = ((0.65, 0.2, 0.06, 1.0), (1.05, 0.02, 0.012, 0.0))
#: The share of [0, 1] that two classes' appearance values have in common (see :func:`_appearance`).
OVERLAP = 0.3
#: How often devices show on a portable view, and on another AP view.
_DEVICES = {"AP PORTABLE": 0.85, "AP": 0.15}


def _appearance(rng: np.random.Generator, high: bool) -> float:
    """An appearance value in [0, 1]: uniform on [0, (1 + OVERLAP) / 2] for one class (``high`` false) and on
    [(1 - OVERLAP) / 2, 1] for the other, so the two overlap on the middle ``OVERLAP`` of the range."""
    reach = (1.0 + OVERLAP) / 2
    return rng.uniform(1.0 - reach, 1.0) if high else rng.uniform(0.0, reach)


def _frontal(grid: Grid, rng: np.random.Generator, ap: float) -> np.ndarray:
    """Attenuation map [H, W] of a frontal view; ``ap`` in [0, 1] (PA-like to AP-like) widens the heart and
    darkens the scapulae."""
    canvas = np.zeros_like(grid.x)
    paint(canvas, ellipses(grid, [[0.0, 0.3], [0.0, -0.85]], [[0.84, 1.05], [0.2, 0.3]], [0.0, 0.0]), _SOFT_TISSUE)
    lung_axes = [rng.uniform(0.25, 0.29), rng.uniform(0.48, 0.56)]
    lungs = ellipses(grid, [[-0.36, -0.03], [0.36, -0.03]], [lung_axes, lung_axes], [0.12, -0.12])
    paint(canvas, lungs, _LUNG)
    ribs = np.sin(2 * np.pi * (5.5 * grid.y + 0.9 * grid.x**2) + rng.uniform(0.0, 2 * np.pi)) > 0.55
    paint(canvas, lungs * ribs, 0.3, opacity=0.6)
    heart_width = 0.2 + 0.14 * ap + rng.uniform(0.0, 0.03)
    mediastinum = ellipses(grid, [[0.0, -0.25], [0.08, 0.3]], [[0.13, 0.55], [heart_width, 0.22]], [0.0, -0.3])
    paint(canvas, mediastinum, _MEDIASTINUM)
    paint(canvas, ellipses(grid, [[0.0, 0.0]], [[0.055, 1.2]], [0.0]), _BONE, opacity=0.6)  # spine
    clavicles = [[[-0.1, -0.62], [-0.3, -0.66], [-0.6, -0.72]], [[0.1, -0.62], [0.3, -0.66], [0.6, -0.72]]]
    paint(canvas, polylines(grid, clavicles, [0.05, 0.05]), _BONE)
    scapulae = ellipses(grid, [[-0.62, -0.35], [0.62, -0.35]], [[0.13, 0.28], [0.13, 0.28]], [0.2, -0.2])
    paint(canvas, scapulae, _SOFT_TISSUE, opacity=0.6 * ap)
    return canvas


def _lateral(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Attenuation map [H, W] of a lateral view: one lung field, heart in front (left), spine behind."""
    canvas = np.zeros_like(grid.x)
    paint(canvas, ellipses(grid, [[0.0, 0.3], [0.1, -0.85]], [[0.66, 1.05], [0.2, 0.3]], [0.0, 0.0]), _SOFT_TISSUE)
    lung = ellipses(grid, [[0.03, -0.03]], [[rng.uniform(0.4, 0.45), rng.uniform(0.5, 0.57)]], [0.1])
    paint(canvas, lung, _LUNG)
    ribs = np.sin(2 * np.pi * (5.0 * grid.y - 0.6 * grid.x) + rng.uniform(0.0, 2 * np.pi)) > 0.55
    paint(canvas, lung * ribs, 0.3, opacity=0.4)
    paint(canvas, ellipses(grid, [[-0.2, 0.28]], [[0.24, 0.24]], [0.0]), _MEDIASTINUM - 0.1, opacity=0.8)  # heart
    vertebrae = np.sin(2 * np.pi * 7.0 * grid.y) > -0.6
    paint(canvas, ellipses(grid, [[0.5, 0.05]], [[0.09, 1.1]], [0.05]) * vertebrae, _BONE)
    paint(canvas, polylines(grid, [[[-0.6, -0.6], [-0.62, 0.3]]], [0.04]), _BONE - 0.1)  # sternum
    return canvas


def _add_devices(canvas: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Portable-exam hardware, in place: endotracheal and nasogastric tubes, 3-5 ECG leads with wires."""
    tube_x = rng.normal(0.0, 0.02)
    tubes = [[[tube_x, -1.3], [tube_x, -0.8], [tube_x + 0.01, -0.35]], [[-0.04, -1.3], [-0.04, -0.3], [0.3, 0.6]]]
    paint(canvas, polylines(grid, tubes, [0.045, 0.035]), _DEVICE)
    count = int(rng.integers(3, 6))
    leads = np.stack([rng.uniform(-0.7, 0.7, count), rng.uniform(-0.6, 0.5, count)], axis=1)
    wires = np.stack([leads, leads * [1.8, 1.0] + [0.0, -0.8]], axis=1)
    paint(canvas, polylines(grid, wires, np.full(count, 0.015)), _DEVICE, opacity=0.8)
    paint(canvas, rings(grid, leads, np.full(count, 0.05), 0.035), _DEVICE)


def _expose(rng: np.random.Generator, attenuation: np.ndarray, dx: float) -> np.ndarray:
    """The detector image, uint8 [H, W]: contrast, black level, blur and noise of an exposure ``dx`` in
    [0, 1] (CR-like to DX-like)."""
    low, high = np.array(_EXPOSURE_RANGE[0]), np.array(_EXPOSURE_RANGE[1])
    contrast, black, noise, blurred = low + dx * (high - low)
    image = black + rng.normal(0.0, 0.02) + contrast * rng.uniform(0.92, 1.08) * attenuation
    image = image + rng.normal(0.0, noise, image.shape)
    return to_uint8(blurred * blur(image) + (1.0 - blurred) * image)


def xray_sample(rng: np.random.Generator, size: int) -> tuple[dict[str, str], np.ndarray]:
    """One random sample: its ``modality``, ``study_description_0`` and ``series_description`` fields,
    and the uint8 [size, size] grayscale image."""
    series = list(XRAY_STUDIES)[rng.integers(len(XRAY_STUDIES))]
    modality = XRAY_MODALITIES[rng.integers(len(XRAY_MODALITIES))]
    portable = series == "AP PORTABLE"
    tilt = 0.06 if portable else 0.03  # portable patients are positioned less squarely
    patient = Grid(size, shift=rng.normal(0.0, 0.04, 2), scale=rng.uniform(0.92, 1.06), angle=rng.normal(0.0, tilt))
    if series == "LATERAL":
        attenuation = _lateral(patient, rng)
    else:
        attenuation = _frontal(patient, rng, ap=_appearance(rng, high=series != "PA"))
    if rng.random() < _DEVICES.get(series, 0.0):
        _add_devices(attenuation, patient, rng)
    fields = {"modality": modality, "study_description_0": XRAY_STUDIES[series], "series_description": series}
    return fields, _expose(rng, attenuation, dx=_appearance(rng, high=modality == "DX"))
