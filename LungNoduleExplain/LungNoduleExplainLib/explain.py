"""Soft activation maps on the CT grid.

The networks give one map per output on the patch grid (ReLU(sum_c W[k, c] F[c]), upsampled, min-max normalised
to [0, 1]); this puts them into the CT's own geometry so a viewer can overlay them on the scan.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .patch import PatchGeometry, paste_to_reference

DISPLAY_THRESHOLD = 0.25  # the paper hides map values below this when displaying
# What a map can show (attribution.py computes them). "contribution" is the default: the SAM head's evidence with
# the SAM layer's spatial weights (benchmarks/map_quality: faithful by deletion and randomisation, the paper's
# formula "sam" is not); "occlusion" costs ~100-300 forward passes a member.
MAP_METHODS = ("contribution", "sam", "occlusion")
DEFAULT_MAP_METHOD = MAP_METHODS[0]


def patch_box_in(reference: sitk.Image, geometry: PatchGeometry) -> tuple[np.ndarray, np.ndarray] | None:
    """Index box [start, stop) of `reference` (i, j, k) covering the patch, or None when they do not overlap."""
    size = np.asarray(geometry.size)
    corners = [np.asarray(geometry.origin) + np.asarray(c) * (size - 1) * np.asarray(geometry.spacing)
               for c in np.ndindex(2, 2, 2)]
    index = np.asarray([reference.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners])
    start = np.maximum(np.floor(index.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, np.asarray(reference.GetSize()))
    return (start, stop) if np.all(stop > start) else None


def to_ct_grid(map_zyx: np.ndarray, geometry: PatchGeometry, ct: sitk.Image) -> sitk.Image:
    """A patch-grid map [z, y, x] as a float32 image on `ct`'s grid (0 outside the patch), values in [0, 1].

    Only the CT region under the patch is resampled, so the cost does not grow with the size of the scan.
    """
    out = np.zeros(tuple(reversed(ct.GetSize())), dtype=np.float32)
    box = patch_box_in(ct, geometry)
    if box is not None:
        start, stop = box
        region = sitk.Image([int(v) for v in stop - start], sitk.sitkFloat32)
        region.SetSpacing(ct.GetSpacing())
        region.SetDirection(ct.GetDirection())
        region.SetOrigin(ct.TransformIndexToPhysicalPoint([int(v) for v in start]))
        pasted = sitk.GetArrayFromImage(paste_to_reference(map_zyx, geometry, region))
        out[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = np.clip(pasted, 0.0, 1.0)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(ct)
    return image
