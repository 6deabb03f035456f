"""Axial long- and short-axis diameters of a segmented nodule, measured as Lung-RADS and Fleischner ask.

On each axial slice (the image's k slices) the segmentation's outline is traced at the pixel edges (the 0.5
iso-line of the mask, the contour the overlays draw) and mapped to physical mm through the image's spacing and
direction. The long axis is the longest chord of that outline; the short axis the longest chord perpendicular to
it on the same slice. The slice reported is the one whose long axis is greatest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

PERPENDICULAR_SAMPLES = 256  # positions along the long axis at which the perpendicular chord is measured


@dataclass(frozen=True)
class AxialDiameters:
    """long_mm, short_mm: long axis and perpendicular short axis (mm) on axial slice `slice_index` (k, 0-based);
    all 0 and slice_index -1 for an empty mask."""

    long_mm: float
    short_mm: float
    slice_index: int

    @property
    def mean_mm(self) -> float:
        """Lung-RADS v1.1 'mean diameter': (long + short) / 2, mm."""
        return (self.long_mm + self.short_mm) / 2.0


def axial_diameters(mask: sitk.Image) -> AxialDiameters:
    """Long and perpendicular short axis (mm) of the non-zero voxels of a 3D mask, on the axial slice where the
    long axis is greatest (ties: the one with the longer short axis)."""
    array = sitk.GetArrayViewFromImage(mask) > 0  # [k, j, i]
    best = AxialDiameters(0.0, 0.0, -1)
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    scale = direction * np.asarray(mask.GetSpacing())[None, :]  # index step (i, j, k) -> physical step (mm)
    normal = np.cross(scale[:, 0], scale[:, 1])
    normal /= np.linalg.norm(normal)  # the slice plane's normal, also for a sheared grid
    for k in np.flatnonzero(array.any(axis=(1, 2))):
        long_mm, short_mm = _long_short(_outline_mm(array[k], scale), normal)
        if (long_mm, short_mm) > (best.long_mm, best.short_mm):
            best = AxialDiameters(long_mm, short_mm, int(k))
    return best


def _outline_mm(plane: np.ndarray, scale: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D boolean slice [j, i] as arrays of physical points (N, 3), mm from the slice's
    index origin (only distances are used)."""
    import contourpy  # matplotlib's contour tracer

    padded = np.pad(plane.astype(np.float64), 1)  # every outline closes inside the padded array
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    return [np.column_stack([line[:, 0] - 1.0, line[:, 1] - 1.0, np.zeros(len(line))]) @ scale.T
            for line in lines if len(line) > 1]


def _long_short(outlines: list[np.ndarray], normal: np.ndarray) -> tuple[float, float]:
    """(longest chord, longest chord perpendicular to it) of closed polygons (N, 3 points) lying in the plane of
    unit normal `normal`, mm."""
    points = np.concatenate(outlines)
    squares = np.einsum("ak,ak->a", points, points)
    distances = np.maximum(squares[:, None] + squares[None, :] - 2.0 * points @ points.T, 0.0)  # (N, N), mm^2
    a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)
    long_mm = float(np.sqrt(distances[a, b]))
    if long_mm == 0.0:
        return 0.0, 0.0
    u = (points[b] - points[a]) / long_mm
    v = np.cross(normal, u)
    starts = np.concatenate([o[:-1] for o in outlines])
    ends = np.concatenate([o[1:] for o in outlines])
    su, eu, sv, ev = starts @ u, ends @ u, starts @ v, ends @ v
    short_mm = 0.0
    # sweep lines perpendicular to the long axis; each crosses the outline's edges; the chord spans the crossings
    for t in np.linspace((points @ u).min(), (points @ u).max(), PERPENDICULAR_SAMPLES)[1:-1]:
        crossing = (su - t) * (eu - t) < 0
        if not crossing.any():
            continue
        w = (t - su[crossing]) / (eu[crossing] - su[crossing])
        hits = sv[crossing] + w * (ev[crossing] - sv[crossing])
        short_mm = max(short_mm, float(hits.max() - hits.min()))
    return long_mm, short_mm
