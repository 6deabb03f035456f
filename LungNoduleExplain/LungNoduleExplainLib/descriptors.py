"""Nodule descriptors: shape and density of the nodule region (prior >= 0.5) on the classifier's patch grid.

Why: the METHOD.md input is min-max normalised per patch, which removes absolute density (HU), and a small
network trained on 2 CPU cores learns size and shape only roughly. Calcification, ground glass, margin and
roundness are, to a radiologist, density and shape facts of the nodule region. The `descriptors` option of the
network feeds these numbers, standardised, to a linear term beside each head's SAM term, so those outputs need
not rediscover HU from a normalised image. They are computed from the same HU patch and prior the network sees,
so training (reference mask or out-of-fold nnU-Net map) and a click in Slicer (nnU-Net map) agree.

Shape comes from SimpleITK's label shape statistics; density from numpy percentiles of the HU inside the region;
the outline (solidity, radial variation: what makes a margin lobulated) from scipy's convex hull and the distances
of SimpleITK's contour voxels to the centroid.

Every call computes every descriptor. A network takes a named set (DESCRIPTOR_SETS, recorded in its bundle); sets
only ever grow by appending, so a set is a prefix of DESCRIPTOR_NAMES and older bundles keep reading their columns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError

SHAPE_DENSITY: tuple[str, ...] = (
    "log_volume_mm3", "feret_diameter_mm", "elongation", "flatness", "roundness",
    "hu_mean", "hu_std", "hu_p10", "hu_p50", "hu_p90", "hu_p98",
    "fraction_above_200hu", "fraction_below_minus400hu", "shell_hu_mean", "shell_hu_p90",
)
OUTLINE: tuple[str, ...] = ("solidity", "radial_cv")
DESCRIPTOR_NAMES: tuple[str, ...] = SHAPE_DENSITY + OUTLINE
# name -> the first n of DESCRIPTOR_NAMES; "shape-density" is what bundles up to v9 were trained with.
DESCRIPTOR_SETS: dict[str, tuple[str, ...]] = {
    "shape-density": SHAPE_DENSITY,
    "shape-density-outline": SHAPE_DENSITY + OUTLINE,
}
REGION_THRESHOLD = 0.5
SHELL_VOXELS = (2, 2, 1)  # x, y, z: about 1.4 mm around the region on the 0.7 x 0.7 x 1.25 mm grid


def nodule_region(prior: np.ndarray) -> np.ndarray:
    """Boolean [z, y, x] region: prior >= 0.5; else half the prior's maximum; else the centre voxel."""
    region = prior >= REGION_THRESHOLD
    if not region.any() and float(prior.max()) > 0.0:
        region = prior >= 0.5 * float(prior.max())
    if not region.any():
        region = np.zeros(prior.shape, dtype=bool)
        region[tuple(s // 2 for s in prior.shape)] = True
    return region


def hull_voxel_count(hull: ConvexHull, low: np.ndarray, high: np.ndarray) -> int:
    """How many voxel centres of the index box [low, high) lie in the hull (facet tolerance 1e-6). The inside of a
    convex hull along each x row is one interval, so the facets bound x per (z, y) row: rows x facets operations
    instead of voxels x facets (a large round nodule has ~10^5 voxels and ~10^3 facets)."""
    normals, offsets, tolerance = hull.equations[:, :3], hull.equations[:, 3], 1e-6
    rows = np.indices(high[:2] - low[:2]).reshape(2, -1).T + low[:2]  # (z, y) of every x row
    rest = rows @ normals[:, :2].T + offsets  # [rows, facets]: the facet value at x = 0
    a = normals[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (tolerance - rest) / a  # inside: x <= bound where a > 0, x >= bound where a < 0
    first = np.maximum(np.ceil(np.max(np.where(a < 0, bound, -np.inf), axis=1)), low[2])
    last = np.minimum(np.floor(np.min(np.where(a > 0, bound, np.inf), axis=1)), high[2] - 1)
    parallel_ok = np.all((a != 0) | (rest <= tolerance), axis=1)  # facets parallel to x bound the row as a whole
    return int(np.where(parallel_ok & (last >= first), last - first + 1, 0).sum())


def outline_descriptors(region: np.ndarray, contour: np.ndarray, spacing_xyz: Sequence[float]) -> list[float]:
    """Solidity (region voxels / voxels of its convex hull, as scikit-image's regionprops) and radial_cv (std / mean
    of the distances from the centroid to the contour voxels): 1 and about 0 for a round region, solidity lower and
    radial_cv higher for lobes and spicules."""
    spacing_zyx = np.asarray(spacing_xyz, dtype=float)[::-1]
    centres = np.argwhere(contour)
    try:
        hull = ConvexHull(centres)
        solidity = float(region.sum() / hull_voxel_count(hull, centres.min(axis=0), centres.max(axis=0) + 1))
    except (QhullError, ValueError):  # flat or too few voxels for a 3D hull
        solidity = 1.0
    distances = np.linalg.norm((centres - np.argwhere(region).mean(axis=0)) * spacing_zyx, axis=1)
    radial_cv = float(distances.std() / distances.mean()) if distances.mean() > 0 else 0.0
    return [solidity, radial_cv]


def nodule_descriptors(hu: np.ndarray, prior: np.ndarray, spacing_xyz: Sequence[float]) -> np.ndarray:
    """float32 vector in DESCRIPTOR_NAMES order from HU [z, y, x] and prior [z, y, x] on one grid."""
    region = nodule_region(prior)
    label = sitk.GetImageFromArray(region.astype(np.uint8))
    label.SetSpacing(tuple(float(s) for s in spacing_xyz))
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeFeretDiameterOn()
    shape.Execute(label)
    single_voxel = shape.GetNumberOfPixels(1) < 2  # elongation etc. are undefined for one voxel
    inside = hu[region]
    shell = sitk.GetArrayFromImage(sitk.BinaryDilate(label, SHELL_VOXELS)).astype(bool) & ~region
    around = hu[shell] if shell.any() else inside
    contour = sitk.GetArrayFromImage(sitk.BinaryContour(label)).astype(bool)
    p10, p50, p90, p98 = np.percentile(inside, (10, 50, 90, 98))
    values = [
        np.log(shape.GetPhysicalSize(1)), shape.GetFeretDiameter(1),
        1.0 if single_voxel else shape.GetElongation(1), 1.0 if single_voxel else shape.GetFlatness(1),
        1.0 if single_voxel else shape.GetRoundness(1),
        inside.mean(), inside.std(), p10, p50, p90, p98,
        np.mean(inside > 200.0), np.mean(inside < -400.0), around.mean(), np.percentile(around, 90),
        *outline_descriptors(region, contour, spacing_xyz),
    ]
    out = np.asarray(values, dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
