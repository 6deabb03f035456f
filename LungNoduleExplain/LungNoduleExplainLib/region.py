"""Aligned sub-grids: images on the CT's own grid that cover only a box of it (the nodule's region).

An aligned sub-grid has the CT's spacing and direction, and its origin on a CT voxel centre (the box's corner), so
a viewer overlays it voxel for voxel without resampling, and a 60 MB float32 map of a 512 x 512 x 300 CT becomes
a few MB. Boxes are index ranges [start, stop) of the CT along (i, j, k), as numpy-free tuples in x, y, z order.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (start, stop) voxel indices (i, j, k), stop exclusive
GRID_TOLERANCE = 1e-3  # mm for origins and spacings, and as a fraction of a voxel for the origin's index


def box_image(reference: sitk.Image, box: Box, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """An empty image of `pixel_type` on `reference`'s grid covering `box`."""
    start, stop = box
    image = sitk.Image([int(b - a) for a, b in zip(start, stop)], pixel_type)
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    image.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in start]))
    return image


def box_in(image: sitk.Image, reference: sitk.Image, what: str = "image") -> Box:
    """The box of `reference` that `image` covers; ValueError unless `image` is an aligned sub-grid inside it
    (same spacing and direction, origin on a voxel centre, all of it within `reference`)."""
    for field, got, expected in (("spacing", image.GetSpacing(), reference.GetSpacing()),
                                 ("direction", image.GetDirection(), reference.GetDirection())):
        if len(got) != len(expected) or not np.allclose(got, expected, atol=GRID_TOLERANCE):
            raise ValueError(f"{what} is not on the CT grid: {field} {tuple(np.round(got, 4))} "
                             f"differs from the CT's {tuple(np.round(expected, 4))}")
    index = np.asarray(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    start = np.round(index).astype(int)
    stop = start + np.asarray(image.GetSize())
    if not np.allclose(index, start, atol=GRID_TOLERANCE):
        raise ValueError(f"{what} is not on the CT grid: origin {tuple(np.round(image.GetOrigin(), 4))} "
                         f"falls between the CT's voxels (index {tuple(np.round(index, 3))})")
    if np.any(start < 0) or np.any(stop > np.asarray(reference.GetSize())):
        raise ValueError(f"{what} is not on the CT grid: voxels {tuple(start)}-{tuple(stop)} reach outside the "
                         f"CT's size {reference.GetSize()}")
    return tuple(int(v) for v in start), tuple(int(v) for v in stop)


def mask_box(mask: sitk.Image, margin: int = 0) -> Box | None:
    """Box of `mask`'s non-zero voxels grown by `margin` voxels (clipped to the image), or None when empty."""
    array = sitk.GetArrayViewFromImage(mask)
    nonzero = [np.flatnonzero(np.any(array, axis=axes)) for axes in ((0, 1), (0, 2), (1, 2))]  # i, j, k
    if any(len(n) == 0 for n in nonzero):
        return None
    size = mask.GetSize()
    start = tuple(max(int(n[0]) - margin, 0) for n in nonzero)
    stop = tuple(min(int(n[-1]) + 1 + margin, s) for n, s in zip(nonzero, size))
    return start, stop


def union(boxes: Iterable[Box | None]) -> Box | None:
    """The smallest box holding every box given (None entries skipped); None when there is none."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return (tuple(min(b[0][a] for b in boxes) for a in range(3)),
            tuple(max(b[1][a] for b in boxes) for a in range(3)))


def fit(image: sitk.Image, reference: sitk.Image, box: Box) -> sitk.Image:
    """`image` (an aligned sub-grid of `reference`, or `reference`'s full grid) cut or zero-padded to `box`,
    keeping its pixel type; voxel values are copied, never interpolated."""
    own_start, own_stop = box_in(image, reference)
    start, stop = box
    low = [max(a, b) for a, b in zip(own_start, start)]
    high = [min(a, b) for a, b in zip(own_stop, stop)]
    out = np.zeros(tuple(int(b - a) for a, b in zip(reversed(start), reversed(stop))),
                   dtype=sitk.GetArrayViewFromImage(image).dtype)
    if all(h > lo for lo, h in zip(low, high)):
        source = sitk.GetArrayViewFromImage(image)
        src = tuple(slice(lo - o, h - o) for lo, h, o in zip(reversed(low), reversed(high), reversed(own_start)))
        dst = tuple(slice(lo - s, h - s) for lo, h, s in zip(reversed(low), reversed(high), reversed(start)))
        out[dst] = source[src]
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(box_image(reference, box, image.GetPixelID()))
    return result


def on_full_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """An aligned sub-grid spread back over `reference`'s whole grid (0 outside): for readers that need it."""
    return fit(image, reference, ((0, 0, 0), tuple(int(v) for v in reference.GetSize())))


def physical_box(reference: sitk.Image, corners_lps: Sequence[Sequence[float]], margin: int = 1) -> Box | None:
    """Box of `reference` covering the physical points `corners_lps` (grown by `margin` voxels and clipped), or
    None when they lie outside it."""
    index = np.asarray([reference.TransformPhysicalPointToContinuousIndex([float(v) for v in c])
                        for c in corners_lps])
    start = np.maximum(np.floor(index.min(axis=0)).astype(int) - margin, 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1 + margin, np.asarray(reference.GetSize()))
    if not np.all(stop > start):
        return None
    return tuple(int(v) for v in start), tuple(int(v) for v in stop)


def nodule_box(ct: sitk.Image, segmentation: sitk.Image, maps: Sequence[sitk.Image], point_lps: Sequence[float],
               margin: int = 2) -> Box:
    """The box of `ct` a nodule's files cover: its maps' boxes and its segmented voxels grown by `margin` (all
    images aligned sub-grids of `ct` or on its full grid); a voxel at the point when there is neither."""
    boxes = [box_in(m, ct, "map") for m in maps]
    seg_start, _ = box_in(segmentation, ct, "segmentation")
    own = mask_box(segmentation, margin)
    if own is not None:  # from the segmentation's own indices to the CT's, clipped to the CT
        boxes.append((tuple(max(a + o, 0) for a, o in zip(own[0], seg_start)),
                      tuple(min(b + o, n) for b, o, n in zip(own[1], seg_start, ct.GetSize()))))
    box = union(boxes)
    if box is None:
        index = [min(max(v, 0), n - 1) for v, n in zip(ct.TransformPhysicalPointToIndex(
            [float(v) for v in point_lps]), ct.GetSize())]
        box = (tuple(index), tuple(v + 1 for v in index))
    return box
