"""Soft activation maps on the CT grid (over the patch's region).

The networks give one map per output on the patch grid (ReLU(sum_c W[k, c] F[c]), upsampled, min-max normalised
to [0, 1]); this puts them into the CT's own geometry so a viewer can overlay them on the scan.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .patch import PatchGeometry, paste_to_reference
from .region import Box, box_image, physical_box

DISPLAY_THRESHOLD = 0.25  # the paper hides map values below this when displaying
# What a map can show (attribution.py computes them). "contribution" is the default: the SAM head's evidence with
# the SAM layer's spatial weights (benchmarks/map_quality: faithful by deletion and randomisation, the paper's
# formula "sam" is not); "occlusion" costs ~100-300 forward passes a member.
MAP_METHODS = ("contribution", "sam", "occlusion")
DEFAULT_MAP_METHOD = MAP_METHODS[0]


def patch_box_in(reference: sitk.Image, geometry: PatchGeometry) -> Box | None:
    """Index box [start, stop) of `reference` (i, j, k) covering the patch, or None when they do not overlap."""
    size = np.asarray(geometry.size)
    corners = [np.asarray(geometry.origin) + np.asarray(c) * (size - 1) * np.asarray(geometry.spacing)
               for c in np.ndindex(2, 2, 2)]
    return physical_box(reference, corners, margin=1)


def to_ct_grid(map_zyx: np.ndarray, geometry: PatchGeometry, ct: sitk.Image) -> sitk.Image:
    """A patch-grid map [z, y, x] as a float32 image on `ct`'s grid over the patch's box only (an aligned sub-grid:
    the CT's spacing and direction, origin at the box's corner; region.py), values in [0, 1].

    Only the box is stored: on a 512 x 512 x 300 CT a full-grid map would be 300 MB of mostly zeros per output.
    A patch that misses the CT gives a 1-voxel zero map at the CT's corner.
    """
    box = patch_box_in(ct, geometry) or ((0, 0, 0), (1, 1, 1))
    region = box_image(ct, box)
    pasted = sitk.GetArrayFromImage(paste_to_reference(map_zyx, geometry, region))
    image = sitk.GetImageFromArray(np.clip(pasted, 0.0, 1.0).astype(np.float32))
    image.CopyInformation(region)
    return image
