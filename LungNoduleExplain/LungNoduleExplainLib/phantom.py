"""A synthetic chest CT with one solid nodule: the built-in input of `lungnodule-explain demo` and of tests.

The phantom is not anatomy, only enough of it to exercise the pipeline end to end: air around an elliptical body
(soft tissue ~40 HU under a fat layer ~-100 HU), a vertebra (~400 HU), two lungs (~-850 HU with smooth texture
and noise), vessel-like tubes that taper from the hilum outwards, and a solid nodule (~45 HU, spherical or
lobulated) in the right lung. int16 Hounsfield units, LPS geometry with an identity direction, spacing
0.7 x 0.7 x 1.25 mm (x, y, z) like the classifier's own grid. Deterministic for a seed.
A phantom is not a patient: everything built from it must say so.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

logger = logging.getLogger(__name__)

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BONE_HU = 400.0
LUNG_HU = -850.0
VESSEL_HU = 40.0


class Phantom(NamedTuple):
    """ct: int16 HU image. nodule_center_lps: nodule centre (LPS mm). nodule_mask: uint8 mask on the CT grid."""

    ct: sitk.Image
    nodule_center_lps: tuple[float, float, float]
    nodule_mask: sitk.Image


def make_phantom_ct(seed: int = 0, *, diameter_mm: float = 14.0, lobulated: bool = False,
                    size: Sequence[int] = (192, 192, 96), spacing: Sequence[float] = (0.7, 0.7, 1.25),
                    nodule_hu: float = 45.0, noise_hu: float = 20.0, n_vessels: int = 24) -> Phantom:
    """Build the phantom. size is (x, y, z) voxels; spacing (x, y, z) mm; diameter_mm the nodule's diameter.

    The image is centred on the LPS origin (0, 0, 0) with identity direction, so patient right is -x,
    anterior is -y and cranial is +z. Returns Phantom(ct, nodule_center_lps, nodule_mask), which unpacks as
    a 3-tuple.
    """
    size_a = np.asarray(size, dtype=int)
    spacing_a = np.asarray(spacing, dtype=float)
    if size_a.shape != (3,) or spacing_a.shape != (3,) or np.any(size_a < 16) or np.any(spacing_a <= 0):
        raise ValueError(f"phantom size {tuple(size)} and spacing {tuple(spacing)} must be 3 values each, "
                         "size >= 16 voxels and spacing > 0 mm per axis")
    if not 3.0 <= diameter_mm <= 40.0:
        raise ValueError(f"nodule diameter {diameter_mm} mm is outside the supported 3-40 mm")
    rng = np.random.default_rng(seed)
    origin = -(size_a - 1) / 2.0 * spacing_a
    z, y, x = _grid_mm(size_a, spacing_a, origin)
    extent = (size_a - 1) * spacing_a / 2.0  # half field of view (x, y, z) mm

    body_a, body_b = 0.96 * extent[0], 0.80 * extent[1]
    shape = (int(size_a[2]), int(size_a[1]), int(size_a[0]))
    body_r = np.broadcast_to((x / body_a) ** 2 + (y / body_b) ** 2, shape)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[body_r <= 1.0] = FAT_HU
    hu[body_r <= 0.86] = SOFT_TISSUE_HU
    spine = ((x / (0.12 * extent[0])) ** 2 + ((y - 0.58 * body_b) / (0.12 * extent[1])) ** 2) <= 1.0
    hu[np.broadcast_to(spine, shape)] = BONE_HU

    lung_a, lung_b, lung_c = 0.36 * extent[0], 0.62 * body_b, 1.15 * extent[2]
    lungs = np.zeros(hu.shape, dtype=bool)
    lung_centres = []
    for side in (-1.0, 1.0):
        cx, cy = side * 0.47 * extent[0], -0.04 * body_b
        lung_centres.append((cx, cy))
        lungs |= ((x - cx) / lung_a) ** 2 + ((y - cy) / lung_b) ** 2 + (z / lung_c) ** 2 <= 1.0
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, hu.shape), sigma=2.0).astype(np.float32)
    hu[lungs] = LUNG_HU + 25.0 * texture[lungs] / max(float(texture.std()), 1e-6)

    nodule_center = _nodule_centre(rng, lung_centres[0], (lung_a, lung_b, lung_c), diameter_mm)
    nodule_sdf = _nodule_sdf(rng, (z, y, x), nodule_center, diameter_mm / 2.0, lobulated)
    keep_clear = nodule_sdf > 3.0  # vessels stay 3 mm away so the nodule mask is the nodule alone
    vessels = _vessel_tree(rng, (z, y, x), lung_centres, (lung_a, lung_b, lung_c), n_vessels, spacing_a, origin)
    hu[vessels & lungs & keep_clear] = VESSEL_HU
    nodule = np.broadcast_to(nodule_sdf <= 0.0, shape)
    hu[nodule] = nodule_hu

    # Partial volume at edges (sigma ~0.5 mm) then scanner noise.
    hu = ndimage.gaussian_filter(hu, sigma=tuple(0.5 / spacing_a[::-1]))
    hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    ct = _to_image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), spacing_a, origin)
    mask = _to_image(nodule.astype(np.uint8), spacing_a, origin)
    logger.debug("phantom seed %d: nodule %.1f mm at LPS %s", seed, diameter_mm, np.round(nodule_center, 1))
    return Phantom(ct, tuple(float(v) for v in nodule_center), mask)


def _grid_mm(size: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """LPS mm coordinates of every voxel, as broadcastable [z, y, x] arrays."""
    axes = [origin[d] + np.arange(size[d], dtype=np.float32) * spacing[d] for d in range(3)]
    return (axes[2][:, None, None], axes[1][None, :, None], axes[0][None, None, :])


def _nodule_centre(rng: np.random.Generator, lung_centre: tuple[float, float], lung_axes: tuple[float, ...],
                   diameter_mm: float) -> np.ndarray:
    """A point in the right lung (-x) far enough from its wall for the whole nodule plus a 4 mm margin."""
    a, b, c = lung_axes
    radius = diameter_mm / 2.0 + 4.0
    for _ in range(1000):
        offset = rng.uniform(-1.0, 1.0, 3) * np.array([0.4 * a, 0.4 * b, 0.25 * c])
        inner = np.array([a, b, c]) - radius
        if np.all(inner > 0) and np.sum((offset / inner) ** 2) <= 1.0:
            return np.array([lung_centre[0] + offset[0], lung_centre[1] + offset[1], offset[2]])
    raise ValueError(f"a {diameter_mm} mm nodule does not fit in a phantom lung of semi-axes "
                     f"{tuple(round(v, 1) for v in lung_axes)} mm; enlarge the phantom")


def _nodule_sdf(rng: np.random.Generator, zyx: tuple[np.ndarray, ...], centre: np.ndarray, radius: float,
                lobulated: bool) -> np.ndarray:
    """Approximate signed distance (mm) to the nodule surface: negative inside. Lobulated: a union of spheres."""
    z, y, x = zyx
    sdf = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) - radius
    if lobulated:
        for _ in range(int(rng.integers(4, 7))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            lobe_centre = centre + 0.85 * radius * direction
            lobe_radius = radius * rng.uniform(0.40, 0.55)
            lobe = np.sqrt((x - lobe_centre[0]) ** 2 + (y - lobe_centre[1]) ** 2
                           + (z - lobe_centre[2]) ** 2) - lobe_radius
            sdf = np.minimum(sdf, lobe)
    return sdf.astype(np.float32)


def _vessel_tree(rng: np.random.Generator, zyx: tuple[np.ndarray, ...], lung_centres: list[tuple[float, float]],
                 lung_axes: tuple[float, ...], n_vessels: int, spacing: np.ndarray,
                 origin: np.ndarray) -> np.ndarray:
    """Tubes from each hilum (the lung's medial side) outwards, tapering from ~2.5 mm to ~0.8 mm in radius."""
    shape = (zyx[0].shape[0], zyx[1].shape[1], zyx[2].shape[2])
    vessels = np.zeros(shape, dtype=bool)
    a, b, c = lung_axes
    for n in range(n_vessels):
        cx, cy = lung_centres[n % 2]
        side = np.sign(cx)
        point = np.array([cx - side * 0.7 * a, cy + rng.uniform(-0.2, 0.2) * b, rng.uniform(-0.3, 0.3) * c])
        direction = np.array([side, rng.uniform(-0.8, 0.8), rng.uniform(-0.6, 0.6)])
        direction /= np.linalg.norm(direction)
        length = rng.uniform(0.8, 1.4) * a
        steps = int(length / 1.0)
        for s in range(steps):
            radius = 2.5 - 1.7 * s / max(steps - 1, 1)
            _stamp_ball(vessels, point, radius, spacing, origin)
            direction += rng.normal(0.0, 0.08, 3)
            direction /= np.linalg.norm(direction)
            point = point + direction * 1.0
    return vessels


def _stamp_ball(mask: np.ndarray, centre_xyz: np.ndarray, radius: float, spacing: np.ndarray,
                origin: np.ndarray) -> None:
    """Set the voxels within `radius` mm of `centre_xyz` (LPS mm) in `mask` [z, y, x]."""
    index = (centre_xyz - origin) / spacing
    reach = np.ceil(radius / spacing).astype(int) + 1
    lo = np.maximum(np.floor(index).astype(int) - reach, 0)
    hi = np.minimum(np.floor(index).astype(int) + reach + 1, np.array(mask.shape[::-1]))
    if np.any(hi <= lo):
        return
    axes = [(np.arange(lo[d], hi[d]) - index[d]) * spacing[d] for d in range(3)]
    dist2 = axes[2][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[0][None, None, :] ** 2
    mask[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] |= dist2 <= radius ** 2


def _to_image(array: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image

