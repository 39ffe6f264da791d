"""Vectorised raster drawing for the synthetic data sets: anti-aliased shape coverage maps.

A :class:`Grid` gives every pixel centre's coordinates in a drawing frame (x right, y down,
[-1, 1] across the image unless the frame is moved); the shape functions return a coverage map
[H, W] in [0, 1] (1 inside, a one-pixel ramp at the edge), which :func:`paint` blends into a
canvas. Several shapes of one kind are drawn in one call, each evaluated only on the pixels of
its bounding box, so small shapes cost little however large the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Grid", "discs", "ellipses", "rings", "polylines", "paint", "blur", "to_uint8"]

# signed distance (negative inside) of shape k at frame points x, y [n, w, w] -> [n, w, w]
SignedDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Grid:
    """The pixel centres of a ``size`` x ``size`` image in a frame in which shapes appear scaled by
    ``scale``, rotated by ``angle`` (radians), then shifted by ``shift``: ``x``, ``y`` [H, W];
    ``pixel`` is one pixel's width in frame units."""

    def __init__(self, size: int, shift: Sequence[float] = (0.0, 0.0), scale: float = 1.0, angle: float = 0.0):
        self.size = size
        self.pixel = 2.0 / (size * scale)
        self._shift = (float(shift[0]), float(shift[1]))
        self._scale, self._cos, self._sin = scale, math.cos(angle), math.sin(angle)
        centres = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
        image_y, image_x = np.meshgrid(centres, centres, indexing="ij")
        dx, dy = image_x - self._shift[0], image_y - self._shift[1]
        self.x = (self._cos * dx + self._sin * dy) / scale
        self.y = (self._cos * dy - self._sin * dx) / scale

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame points -> (column, row) pixel coordinates, pixel centres at integers."""
        image_x = self._shift[0] + self._scale * (self._cos * x - self._sin * y)
        image_y = self._shift[1] + self._scale * (self._sin * x + self._cos * y)
        return (image_x + 1.0) * (self.size / 2.0) - 0.5, (image_y + 1.0) * (self.size / 2.0) - 0.5


def _rasterise(grid: Grid, lows: np.ndarray, highs: np.ndarray, signed_distance: SignedDistance) -> np.ndarray:
    """Coverage of n shapes with frame bounding boxes ``lows``/``highs`` [n, 2], combined by maximum."""
    if len(lows) == 0:
        return np.zeros((grid.size, grid.size))
    corners_x = np.stack([lows[:, 0], lows[:, 0], highs[:, 0], highs[:, 0]], axis=1)
    corners_y = np.stack([lows[:, 1], highs[:, 1], lows[:, 1], highs[:, 1]], axis=1)
    columns, rows = grid.to_pixels(corners_x, corners_y)
    first_column, first_row = np.floor(columns.min(axis=1)) - 1, np.floor(rows.min(axis=1)) - 1
    end_column, end_row = np.ceil(columns.max(axis=1)) + 1, np.ceil(rows.max(axis=1)) + 1
    width = int(max((end_column - first_column).max(), (end_row - first_row).max())) + 1
    if 2 * width > grid.size:  # big shapes: the whole image at once beats gathering and scattering windows
        distance = signed_distance(grid.x[None], grid.y[None])
        return np.clip(0.5 - distance.min(axis=0) / grid.pixel, 0.0, 1.0)
    steps, last = np.arange(width), grid.size - 1
    column_index = np.clip(np.clip(first_column, 0, last)[:, None, None] + steps[None, None, :], 0, last).astype(
        np.intp
    )
    row_index = np.clip(np.clip(first_row, 0, last)[:, None, None] + steps[None, :, None], 0, last).astype(np.intp)
    row_index, column_index = np.broadcast_arrays(row_index, column_index)
    distance = signed_distance(grid.x[row_index, column_index], grid.y[row_index, column_index])
    coverage = np.zeros((grid.size, grid.size))
    np.maximum.at(coverage, (row_index, column_index), np.clip(0.5 - distance / grid.pixel, 0.0, 1.0))
    return coverage


def _column(values, count: int) -> np.ndarray:
    """``values`` (a scalar or [n]) as float [n, 1, 1], to broadcast over [n, w, w] windows."""
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (count,))[:, None, None]


def discs(grid: Grid, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Filled circles: ``centres`` [n, 2], ``radii`` [n]."""
    return rings(grid, centres, np.zeros(len(centres)), 2 * np.asarray(radii, dtype=np.float64))


def rings(grid: Grid, centres: np.ndarray, radii: np.ndarray, width) -> np.ndarray:
    """Circle outlines ``width`` thick (a scalar or [n]): ``centres`` [n, 2], ``radii`` [n]."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    radius, half_width = _column(radii, n), _column(width, n) / 2
    reach = (radius + half_width)[:, :, 0]
    return _rasterise(
        grid,
        centres - reach,
        centres + reach,
        lambda x, y: (
            np.abs(np.hypot(x - centres[:, 0, None, None], y - centres[:, 1, None, None]) - radius) - half_width
        ),
    )


def ellipses(grid: Grid, centres: np.ndarray, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Filled ellipses: ``centres`` [n, 2], semi-axes ``radii`` [n, 2], rotations ``angles`` [n] (radians)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1, 2)
    semi_x, semi_y = _column(radii[:, 0], n), _column(radii[:, 1], n)
    cos, sin = _column(np.cos(angles), n), _column(np.sin(angles), n)
    reach = radii.max(axis=1, keepdims=True)

    def signed_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - centres[:, 0, None, None], y - centres[:, 1, None, None]
        # Distance from the unit circle in the ellipse's own frame, scaled back by the short semi-axis.
        return (np.hypot((cos * dx + sin * dy) / semi_x, (cos * dy - sin * dx) / semi_y) - 1.0) * np.minimum(
            semi_x, semi_y
        )

    return _rasterise(grid, centres - reach, centres + reach, signed_distance)


def polylines(grid: Grid, points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Thick open curves through ``points`` [k, m, 2] (k curves of m points), ``widths`` [k]."""
    points = np.asarray(points, dtype=np.float64)
    starts, ends = points[:, :-1].reshape(-1, 2), points[:, 1:].reshape(-1, 2)
    n = len(starts)
    half_width = _column(np.repeat(np.asarray(widths, dtype=np.float64) / 2, points.shape[1] - 1), n)
    step_x, step_y = _column(ends[:, 0] - starts[:, 0], n), _column(ends[:, 1] - starts[:, 1], n)
    length2 = np.maximum(step_x**2 + step_y**2, 1e-12)

    def signed_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - starts[:, 0, None, None], y - starts[:, 1, None, None]
        t = np.clip((dx * step_x + dy * step_y) / length2, 0.0, 1.0)
        return np.hypot(dx - t * step_x, dy - t * step_y) - half_width

    reach = half_width[:, :, 0]
    return _rasterise(grid, np.minimum(starts, ends) - reach, np.maximum(starts, ends) + reach, signed_distance)


def paint(canvas: np.ndarray, coverage: np.ndarray, value, opacity: float = 1.0) -> None:
    """Blend ``value`` (a gray level, or an RGB triple for an [H, W, 3] canvas) in, in place."""
    alpha = opacity * coverage
    if canvas.ndim == 3:
        alpha = alpha[:, :, None]
    canvas += alpha * (np.asarray(value, dtype=np.float64) - canvas)


def blur(image: np.ndarray, passes: int = 1) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 smoothing along both image axes, ``passes`` times (edges repeated)."""
    for _ in range(passes):
        for axis in (0, 1):
            source = np.swapaxes(image, 0, axis)
            smoothed = 0.5 * source
            smoothed[1:] += 0.25 * source[:-1]
            smoothed[:-1] += 0.25 * source[1:]
            smoothed[[0, -1]] += 0.25 * source[[0, -1]]
            image = np.swapaxes(smoothed, 0, axis)
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats as uint8, clipped and rounded."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
