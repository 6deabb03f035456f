"""Aligned sub-grids (region.py) and maps written over the patch's box only (explain.to_ct_grid)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib import explain
from LungNoduleExplainLib.patch import PatchGeometry, paste_to_reference
from LungNoduleExplainLib.region import box_image, box_in, fit, mask_box, nodule_box, on_full_grid, union


def oblique_ct() -> sitk.Image:
    """A 60 x 50 x 20 CT with a flipped, rotated direction and anisotropic spacing; voxel values = their index."""
    ct = sitk.GetImageFromArray(np.arange(20 * 50 * 60, dtype=np.float32).reshape(20, 50, 60))
    ct.SetSpacing((0.7, 0.8, 2.5))
    ct.SetOrigin((12.0, -30.0, 100.0))
    c, s = np.cos(0.3), np.sin(0.3)
    ct.SetDirection((-c, -s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0))
    return ct


def test_a_box_image_is_an_aligned_sub_grid_that_box_in_recovers():
    ct = oblique_ct()
    box = ((3, 4, 5), (13, 24, 9))
    assert box_in(box_image(ct, box), ct) == box


@pytest.mark.parametrize("change, expected", [
    (lambda im: im.SetSpacing((0.7, 0.8, 2.0)), "spacing"),
    (lambda im: im.SetDirection((1.0, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),
    (lambda im: im.SetOrigin(tuple(np.add(im.GetOrigin(), (0.2, 0.0, 0.0)))), "falls between the CT's voxels"),
])
def test_an_image_off_the_ct_grid_is_refused_with_what_differs(change, expected):
    ct = oblique_ct()
    image = box_image(ct, ((3, 4, 5), (13, 24, 9)))
    change(image)
    with pytest.raises(ValueError, match=f"map is not on the CT grid: .*{expected}"):
        box_in(image, ct, "map")


def test_an_image_reaching_outside_the_ct_is_refused():
    ct = oblique_ct()
    with pytest.raises(ValueError, match="reach outside the CT's size"):
        box_in(box_image(ct, ((50, 0, 0), (61, 5, 5))), ct, "map")


def test_fit_copies_voxels_without_interpolation_and_pads_with_zero():
    ct = oblique_ct()
    part = fit(ct, ct, ((10, 10, 2), (20, 15, 6)))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(part), sitk.GetArrayViewFromImage(ct)[2:6, 10:15, 10:20])
    wider = fit(part, ct, ((8, 10, 2), (20, 16, 6)))  # 2 more columns before, 1 more row after
    array = sitk.GetArrayViewFromImage(wider)
    assert array[:, :, :2].max() == 0 and array[:, 5, :].max() == 0
    np.testing.assert_array_equal(array[:, :5, 2:], sitk.GetArrayViewFromImage(part))
    full = sitk.GetArrayFromImage(on_full_grid(part, ct))  # a copy: a view would outlive the image
    assert full.shape == (20, 50, 60) and full.sum() == sitk.GetArrayViewFromImage(part).sum()


def test_mask_box_and_union():
    ct = oblique_ct()
    mask = np.zeros((20, 50, 60), dtype=np.uint8)
    mask[4:7, 10:12, 30:35] = 1
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(ct)
    assert mask_box(image) == ((30, 10, 4), (35, 12, 7))
    assert mask_box(image, margin=5) == ((25, 5, 0), (40, 17, 12))
    assert mask_box(image * 0) is None
    assert union([None, ((1, 2, 3), (4, 5, 6)), ((0, 3, 4), (2, 9, 5))]) == ((0, 2, 3), (4, 9, 6))
    assert nodule_box(ct, image, [], (0.0, 0.0, 0.0), margin=0) == ((30, 10, 4), (35, 12, 7))


def test_a_map_pasted_over_the_patch_box_equals_the_full_grid_paste_it_replaces():
    ct = oblique_ct()
    centre = ct.TransformContinuousIndexToPhysicalPoint((30.0, 25.0, 10.0))
    geometry = PatchGeometry.centred_at(centre, (1.0, 1.0, 1.5), (16, 16, 8))
    rng = np.random.default_rng(0)
    patch_map = rng.random((8, 16, 16)).astype(np.float32)
    sub = explain.to_ct_grid(patch_map, geometry, ct)
    (i0, j0, k0), (i1, j1, k1) = box_in(sub, ct)
    assert (i1 - i0) * (j1 - j0) * (k1 - k0) < 0.2 * np.prod(ct.GetSize())
    full = np.clip(sitk.GetArrayFromImage(paste_to_reference(patch_map, geometry, ct)), 0.0, 1.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(on_full_grid(sub, ct)), full, atol=1e-6)
