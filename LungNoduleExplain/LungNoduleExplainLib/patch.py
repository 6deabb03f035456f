"""The classifier's input patch: resample, clip, normalise, centre-crop/pad, and the way back to the CT grid.

METHOD.md: 0.7 x 0.7 x 1.25 mm (x, y, z), clip to the [0.5, 99.5] percentiles, min-max to [0, 1],
64 x 64 x 32 voxels (x, y, z) centred on the nodule, padded with air (-1000 HU). Channel "percentile-voi" does it in
that order (percentiles of the VOI's own voxels, padding is air, 0); channel "percentile", what bundles up to v10
read, takes the percentiles of the padded patch, so the padding (most of a tight VOI's patch) sets the scale.
The patch grid is axis-aligned in LPS (identity direction) whatever the CT's direction, so the network always sees
the same anatomical orientation. Arrays are numpy [z, y, x] (SimpleITK order); torch tensors [C, D=z, H=y, W=x].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from .descriptors import nodule_descriptors

SPACING_XYZ_MM: tuple[float, float, float] = (0.7, 0.7, 1.25)
PATCH_SIZE_XYZ: tuple[int, int, int] = (64, 64, 32)
AIR_HU = -1000.0
CLIP_PERCENTILES = (0.5, 99.5)
# A second input channel keeps absolute density, which percentile min-max removes: calcium (> 200 HU) and ground
# glass (-700..-300 HU) look alike after per-patch min-max but not in Hounsfield units.
HU_WINDOW = (-1000.0, 1000.0)
# The VOI-like box that analysis cuts around a segmented nodule, as the training VOIs were cut by prepare-lidc: in-plane
# at least 32 mm or the nodule extent plus 6 mm a side, in z the nodule extent plus 1 mm; air outside.
VOI_MIN_INPLANE_MM = 32.0
VOI_MARGIN_INPLANE_MM = 6.0
VOI_MARGIN_Z_MM = 1.0
CHANNEL_DESCRIPTIONS = {
    "percentile": "HU clipped to the [0.5, 99.5] percentiles of the air-padded 64x64x32 patch, min-max to [0, 1] "
                  "(bundles v1-v10; the padding sets the lower bound at -1000 HU)",
    "hu-window": "HU clipped to -1000..1000 and scaled to [0, 1]",
    "percentile-voi": "HU clipped to the [0.5, 99.5] percentiles of the VOI's own voxels, min-max to [0, 1], then "
                      "padded with air (0), METHOD.md's order",
}
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class PatchGeometry:
    """Physical grid of a patch (LPS mm). `size` and `spacing` are (x, y, z)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float] = SPACING_XYZ_MM
    size: tuple[int, int, int] = PATCH_SIZE_XYZ
    direction: tuple[float, ...] = IDENTITY

    @classmethod
    def centred_at(cls, center_lps: Sequence[float], spacing: Sequence[float] = SPACING_XYZ_MM,
                   size: Sequence[int] = PATCH_SIZE_XYZ) -> "PatchGeometry":
        """The patch whose continuous centre ((size - 1) / 2 in index space) lies at `center_lps`."""
        spacing_a = np.asarray(spacing, dtype=float)
        origin = np.asarray(center_lps, dtype=float) - (np.asarray(size) - 1) / 2.0 * spacing_a
        return cls(tuple(float(v) for v in origin), tuple(float(s) for s in spacing),
                   tuple(int(n) for n in size))

    @property
    def center_lps(self) -> np.ndarray:
        return np.asarray(self.origin) + (np.asarray(self.size) - 1) / 2.0 * np.asarray(self.spacing)

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        ref = sitk.Image([int(n) for n in self.size], pixel_type)
        ref.SetOrigin(self.origin)
        ref.SetSpacing(self.spacing)
        ref.SetDirection(self.direction)
        return ref

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PatchGeometry":
        return cls(**{k: tuple(v) for k, v in data.items()})


def resample_to_grid(image: sitk.Image, geometry: PatchGeometry, *, interpolator: int = sitk.sitkLinear,
                     default_value: float = AIR_HU) -> np.ndarray:
    """Resample `image` onto the patch grid; voxels outside `image` get `default_value`. Returns [z, y, x] float32."""
    resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), geometry.reference_image(), sitk.Transform(),
                              interpolator, float(default_value), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def normalise_intensity(hu: np.ndarray, percentiles: tuple[float, float] = CLIP_PERCENTILES,
                        voi: np.ndarray | None = None) -> np.ndarray:
    """Clip to the [0.5, 99.5] percentiles of the voxels in `voi` (default: all of `hu`) and min-max to [0, 1]
    (float32). Voxels outside the VOI are air, below the lower percentile, so they become 0."""
    values = hu if voi is None else hu[voi]
    if values.size == 0:
        return np.zeros_like(hu, dtype=np.float32)
    lo, hi = np.percentile(values, percentiles)
    if hi <= lo:
        return np.zeros_like(hu, dtype=np.float32)
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def hu_window(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Hounsfield units clipped to a fixed window and scaled to [0, 1] (float32)."""
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


# name -> (HU padded with air, VOI mask) -> [z, y, x] in [0, 1]. Channels only grow by appending: bundles name the
# channels they read, and PatchSets store them in this order.
CHANNELS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "percentile": lambda hu, voi: normalise_intensity(hu),
    "hu-window": lambda hu, voi: hu_window(hu),
    "percentile-voi": lambda hu, voi: normalise_intensity(hu, voi=voi),
}
INPUT_CHANNELS: tuple[str, ...] = tuple(CHANNELS)


def image_channels(hu: np.ndarray, voi: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """[len(channels), z, y, x] from HU padded with air; `voi` marks the voxels that are image, not padding. Only
    the channels asked for are computed (CHANNEL_DESCRIPTIONS says what each is)."""
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise ValueError(f"image channels {list(channels)}: expected a non-empty subset of {INPUT_CHANNELS}")
    return np.stack([CHANNELS[c](hu, voi) for c in channels])


def resample_with_voi(image: sitk.Image, geometry: PatchGeometry) -> tuple[np.ndarray, np.ndarray]:
    """HU on the patch grid padded with air, and the mask [z, y, x] of the voxels that lie inside `image`."""
    hu = resample_to_grid(image, geometry, default_value=np.nan)
    voi = np.isfinite(hu)
    hu[~voi] = AIR_HU
    return hu, voi


def mask_box_lps(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(low corner, high corner) in LPS mm of the mask's voxels (voxel centres), or None when empty."""
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(mask))
    if len(i) == 0:
        return None
    corners = [mask.TransformIndexToPhysicalPoint((int(a), int(b), int(c)))
               for a in (i.min(), i.max()) for b in (j.min(), j.max()) for c in (k.min(), k.max())]
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)


def keep_voi_box(hu: np.ndarray, inside_ct: np.ndarray, geometry: PatchGeometry,
                 box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """HU with everything outside the VOI-like box around `box` (a nodule's mask_box_lps) set to air, and the mask
    of the voxels that are CT inside that box (the VOI whose percentiles normalise "percentile-voi")."""
    low, high = box
    half = (high - low) / 2.0
    half[:2] = np.maximum(half[:2] + VOI_MARGIN_INPLANE_MM, VOI_MIN_INPLANE_MM / 2.0)
    half[2] = half[2] + VOI_MARGIN_Z_MM
    centre = (low + high) / 2.0
    axes = [geometry.origin[a] + np.arange(geometry.size[a]) * geometry.spacing[a] for a in range(3)]
    inside = [np.abs(axes[a] - centre[a]) <= half[a] for a in range(3)]  # x, y, z
    keep = inside[2][:, None, None] & inside[1][None, :, None] & inside[0][None, None, :]
    return np.where(keep, hu, AIR_HU).astype(np.float32), keep & inside_ct


@dataclass
class Patch:
    """One classifier input: normalised image channels and prior on the patch grid, with that grid's geometry.

    image: [C, z, y, x] float32 in [0, 1], the channels asked for. prior: [z, y, x] float32 in [0, 1] (nodule
    probability or mask). descriptors: shape and HU of the prior region (descriptors.DESCRIPTOR_NAMES), or None
    when not asked for. voi: [z, y, x] the voxels that are CT inside the VOI (the rest is air padding).
    """

    image: np.ndarray
    prior: np.ndarray
    geometry: PatchGeometry
    descriptors: np.ndarray | None
    voi: np.ndarray


def extract_patch(ct: sitk.Image, center_lps: Sequence[float], prior: sitk.Image | None = None, *,
                  channels: Sequence[str], spacing: Sequence[float] = SPACING_XYZ_MM,
                  size: Sequence[int] = PATCH_SIZE_XYZ, voi_box: tuple[np.ndarray, np.ndarray] | None = None,
                  with_descriptors: bool = True) -> Patch:
    """The classifier's input, the one path of training, evaluation and analysis: the patch centred at
    `center_lps` from `ct` (HU) with `channels`, and the prior map (probability in [0, 1] or binary mask, resampled
    linearly; zeros when None).

    Areas outside the CT are padded with air; a tight VOI (a training case) is therefore padded, never stretched.
    voi_box: at analysis, the segmented nodule's mask_box_lps: a whole CT is cut to the VOI-like box around it, as
    the training VOIs were. with_descriptors: compute the nodule descriptors (up to 0.2 s on a large nodule).
    """
    geometry = PatchGeometry.centred_at(center_lps, spacing, size)
    hu, voi = resample_with_voi(ct, geometry)
    if voi_box is not None:
        hu, voi = keep_voi_box(hu, voi, geometry, voi_box)
    if prior is None:
        prior_array = np.zeros_like(hu)
    else:
        prior_array = np.clip(resample_to_grid(prior, geometry, default_value=0.0), 0.0, 1.0)
    prior_array = prior_array.astype(np.float32)
    descriptors = nodule_descriptors(hu, prior_array, geometry.spacing) if with_descriptors else None
    return Patch(image=image_channels(hu, voi, channels), prior=prior_array, geometry=geometry,
                 descriptors=descriptors, voi=voi)


def paste_to_reference(array: np.ndarray, geometry: PatchGeometry, reference: sitk.Image, *,
                       interpolator: int = sitk.sitkLinear, default_value: float = 0.0) -> sitk.Image:
    """Map a patch-grid array [z, y, x] back onto `reference`'s grid (size, spacing, origin, direction).

    The inverse of `resample_to_grid`: returns a float32 image with `reference`'s geometry; outside the patch
    it holds `default_value`.
    """
    expected = tuple(reversed(geometry.size))
    if array.shape != expected:
        raise ValueError(f"patch array has shape {array.shape}; expected [z, y, x] = {expected}")
    patch_image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    patch_image.SetOrigin(geometry.origin)
    patch_image.SetSpacing(geometry.spacing)
    patch_image.SetDirection(geometry.direction)
    return sitk.Resample(patch_image, reference, sitk.Transform(), interpolator, float(default_value),
                         sitk.sitkFloat32)
