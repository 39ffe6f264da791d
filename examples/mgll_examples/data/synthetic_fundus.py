"""Synthetic MGLL-Fundus-style samples: a colour fundus photograph whose lesions show its diseases.

Every image has an orange-red retina on black, an optic disc with vessels radiating from it, and a
darker macula. Mild NPDR adds microaneurysms (small dark-red dots), moderate NPDR also haemorrhages
(larger dark blobs), severe NPDR many haemorrhages and bright yellow hard exudates; AMD adds yellow
drusen around the macula; glaucoma a large pale cup in the optic disc. The ``Description`` is
written from the lesions drawn.
"""

from __future__ import annotations

import numpy as np

from .drawing import Grid, blur, discs, ellipses, paint, polylines, to_uint8

__all__ = ["FUNDUS_CATEGORIES", "fundus_sample"]

MILD = "Mild Non-Proliferative Diabetic Retinopathy"
MODERATE = "Moderate Non-Proliferative Diabetic Retinopathy"
SEVERE = "Severe Non-Proliferative Diabetic Retinopathy"
AMD = "Age-related Macular Degeneration"
GLAUCOMA = "Glaucoma"
HEALTHY = "Healthy"

#: The abnormal categories; a normal image has the category ``Healthy``.
FUNDUS_CATEGORIES = (MILD, MODERATE, SEVERE, AMD, GLAUCOMA)
_FINDINGS = {
    MILD: "only microaneurysms observed",
    MODERATE: "microaneurysms and retinal haemorrhages observed",
    SEVERE: "haemorrhages and hard exudates observed",
    AMD: "drusen around the macula",
    GLAUCOMA: "enlarged optic cup",
}
# Two diseases at once: at most one diabetic retinopathy grade.
_PAIRS = [(grade, other) for grade in (MILD, MODERATE, SEVERE) for other in (AMD, GLAUCOMA)] + [(AMD, GLAUCOMA)]
_NORMAL_FRACTION = 0.3
_PAIR_FRACTION = 0.25

_MICROANEURYSM = (0.42, 0.04, 0.04)
_HAEMORRHAGE = (0.34, 0.03, 0.03)
_EXUDATE = (1.0, 0.9, 0.35)
_DRUSEN = (0.92, 0.8, 0.5)
_VESSEL = (0.5, 0.09, 0.06)
_OPTIC_DISC = (0.97, 0.78, 0.45)
_OPTIC_CUP = (1.0, 0.96, 0.86)


def _diseases(rng: np.random.Generator) -> tuple[str, ...]:
    """No disease (normal), one, or a pair, in sorted order."""
    if rng.random() < _NORMAL_FRACTION:
        return ()
    if rng.random() < _PAIR_FRACTION:
        return tuple(sorted(_PAIRS[rng.integers(len(_PAIRS))]))
    return (FUNDUS_CATEGORIES[rng.integers(len(FUNDUS_CATEGORIES))],)


def _fields(diseases: tuple[str, ...]) -> dict[str, str]:
    if not diseases:
        return {"Disease": f"Normal, {HEALTHY}", "Description": "No abnormality observed"}
    description = "; ".join(_FINDINGS[disease] for disease in diseases)
    return {"Disease": ", ".join(("Abnormal",) + diseases), "Description": description[0].upper() + description[1:]}


def _scatter(
    rng: np.random.Generator,
    n: int,
    around: np.ndarray,
    spread: float,
    retina: tuple[np.ndarray, float],
    avoid: tuple[np.ndarray, float],
) -> np.ndarray:
    """Up to ``n`` points [n, 2], Gaussian around ``around``, inside the retina and off the optic disc."""
    points = around + rng.normal(0.0, spread, (6 * n, 2))
    inside = np.hypot(*(points - retina[0]).T) < 0.85 * retina[1]
    clear = np.hypot(*(points - avoid[0]).T) > 1.4 * avoid[1]
    return points[inside & clear][:n]


def _vessels(rng: np.random.Generator, grid: Grid, disc: np.ndarray, radius: float) -> np.ndarray:
    """Coverage of 5-7 gently curving vessels radiating from the optic disc."""
    count, steps = int(rng.integers(5, 8)), 8
    starts = (
        np.linspace(0.0, 2 * np.pi, count, endpoint=False) + rng.uniform(0.0, 2 * np.pi) + rng.normal(0.0, 0.2, count)
    )
    headings = starts[:, None] + rng.normal(0.0, 0.12, (count, 1)) * np.arange(steps)
    moves = 0.11 * radius * np.stack([np.cos(headings), np.sin(headings)], axis=-1)
    points = disc + np.concatenate([np.zeros((count, 1, 2)), np.cumsum(moves, axis=1)], axis=1)
    return polylines(grid, points, max(0.03, grid.pixel) * rng.uniform(0.9, 1.4, count))


def _dots(grid: Grid, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Small round lesions, at least about one pixel across."""
    return discs(grid, points, np.maximum(radii, 0.7 * grid.pixel))


def _draw(rng: np.random.Generator, size: int, diseases: frozenset[str]) -> np.ndarray:
    """The image, float [size, size, 3] in about [0, 1]."""
    grid = Grid(size)
    centre, radius = rng.normal(0.0, 0.03, 2), rng.uniform(0.86, 0.95)
    side = rng.choice((-1.0, 1.0))  # which eye: the optic disc lies left or right of the macula
    disc = centre + np.array([side * 0.5 * radius, rng.normal(0.0, 0.04)])
    disc_radius = 0.15 * radius * rng.uniform(0.9, 1.1)
    macula = centre + np.array([-side * 0.08 * radius, rng.normal(0.03, 0.03)])
    retina, optic = (centre, radius), (disc, disc_radius)

    colour = np.array([0.80, 0.32, 0.14]) + rng.normal(0.0, 0.02, 3)
    falloff = 1.0 - 0.3 * ((grid.x - centre[0]) ** 2 + (grid.y - centre[1]) ** 2) / radius**2
    macula_shadow = 1.0 - 0.35 * np.exp(-((grid.x - macula[0]) ** 2 + (grid.y - macula[1]) ** 2) / (2 * 0.1**2))
    texture = 1.0 + 0.04 * blur(rng.normal(0.0, 1.0, (size, size)), passes=2)
    canvas = colour * (falloff * macula_shadow * texture)[:, :, None]

    paint(canvas, _vessels(rng, grid, disc, radius), _VESSEL, opacity=0.85)
    paint(canvas, discs(grid, [disc], [disc_radius]), _OPTIC_DISC)
    cup_to_disc = rng.uniform(0.7, 0.85) if GLAUCOMA in diseases else rng.uniform(0.25, 0.4)
    paint(canvas, discs(grid, [disc], [cup_to_disc * disc_radius]), _OPTIC_CUP)

    if diseases & {MILD, MODERATE, SEVERE}:
        points = _scatter(rng, int(rng.integers(5, 10)), centre, 0.35 * radius, retina, optic)
        paint(canvas, _dots(grid, points, rng.uniform(0.022, 0.032, len(points))), _MICROANEURYSM)
    if diseases & {MODERATE, SEVERE}:
        count = int(rng.integers(8, 13)) if SEVERE in diseases else int(rng.integers(3, 6))
        points = _scatter(rng, count, centre, 0.35 * radius, retina, optic)
        semi_major = rng.uniform(0.045, 0.085, len(points))
        semi_axes = np.stack([semi_major, semi_major * rng.uniform(0.5, 1.0, len(points))], axis=1)
        paint(
            canvas, ellipses(grid, points, semi_axes, rng.uniform(0.0, np.pi, len(points))), _HAEMORRHAGE, opacity=0.9
        )
    if SEVERE in diseases:
        clusters = _scatter(rng, 2, centre, 0.3 * radius, retina, optic)
        points = np.concatenate([_scatter(rng, int(rng.integers(3, 7)), c, 0.07, retina, optic) for c in clusters])
        paint(canvas, _dots(grid, points, rng.uniform(0.025, 0.04, len(points))), _EXUDATE)
    if AMD in diseases:
        points = _scatter(rng, int(rng.integers(8, 15)), macula, 0.1, retina, optic)
        paint(canvas, _dots(grid, points, rng.uniform(0.025, 0.045, len(points))), _DRUSEN, opacity=0.85)

    canvas *= rng.uniform(0.85, 1.1) * discs(grid, [centre], [radius])[:, :, None]
    return canvas + rng.normal(0.0, 0.01, canvas.shape)


def fundus_sample(rng: np.random.Generator, size: int) -> tuple[dict[str, str], np.ndarray]:
    """One random sample: its ``Disease`` and ``Description`` fields, and the uint8 [size, size, 3] image."""
    diseases = _diseases(rng)
    return _fields(diseases), to_uint8(_draw(rng, size, frozenset(diseases)))
