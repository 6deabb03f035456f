"""Axial long/short-axis diameters on synthetic masks whose axes are known (mm, through spacing and direction)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib.measurements import axial_diameters


def ellipse_mask(a_mm: float, b_mm: float, angle_deg: float, spacing: tuple[float, float, float],
                 direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1), slices: dict[int, float] | None = None,
                 size: tuple[int, int, int] = (120, 100, 7)) -> sitk.Image:
    """Mask with an ellipse of semi-axes a_mm, b_mm (mm, in physical in-plane units) rotated by angle_deg on
    each slice k of `slices` (k -> scale of the axes on that slice); default: only slice 3 at full size."""
    slices = {3: 1.0} if slices is None else slices
    nx, ny, nz = size
    array = np.zeros((nz, ny, nx), dtype=np.uint8)
    yy, xx = np.meshgrid((np.arange(ny) - ny / 2) * spacing[1], (np.arange(nx) - nx / 2) * spacing[0],
                         indexing="ij")
    t = np.deg2rad(angle_deg)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    for k, scale in slices.items():
        array[k] = (u / (a_mm * scale)) ** 2 + (v / (b_mm * scale)) ** 2 <= 1.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((12.0, -30.0, 100.0))
    return image


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 117.0])
@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (0.5, 0.9, 1.0)])
def test_a_rotated_ellipse_measures_its_axes_within_a_pixel(angle, spacing):
    d = axial_diameters(ellipse_mask(12.0, 5.0, angle, spacing))
    pixel = max(spacing[:2])
    assert d.long_mm == pytest.approx(24.0, abs=pixel)
    assert d.short_mm == pytest.approx(10.0, abs=pixel)
    assert d.slice_index == 3
    assert d.mean_mm == pytest.approx((d.long_mm + d.short_mm) / 2)


def test_the_slice_with_the_greatest_long_axis_is_chosen():
    mask = ellipse_mask(10.0, 6.0, 20.0, (0.6, 0.6, 2.0), slices={1: 0.5, 2: 0.8, 4: 1.0, 5: 0.7})
    d = axial_diameters(mask)
    assert d.slice_index == 4
    assert d.long_mm == pytest.approx(20.0, abs=0.6)
    assert d.short_mm == pytest.approx(12.0, abs=0.6)


def test_the_short_axis_is_perpendicular_to_the_long_one_not_the_smallest_width():
    """An L shape: the longest chord is the diagonal; the widest perpendicular chord is not the arm width."""
    array = np.zeros((1, 40, 40), dtype=np.uint8)
    array[0, 0:30, 0:5] = 1  # vertical arm, 30 x 5 pixels of 1 mm
    array[0, 25:30, 0:30] = 1  # horizontal arm
    image = sitk.GetImageFromArray(array)
    d = axial_diameters(image)
    assert d.long_mm == pytest.approx(np.hypot(30.0, 30.0), abs=1.0)
    # every line perpendicular to the (1, 1) diagonal cuts a 5 mm arm obliquely: 5 * sqrt(2) mm, not 5 mm
    assert d.short_mm == pytest.approx(5.0 * np.sqrt(2.0), abs=0.8)


def test_direction_and_anisotropic_spacing_give_physical_millimetres():
    """The same physical ellipse on a flipped, rotated grid measures the same."""
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    rotated = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    plain = axial_diameters(ellipse_mask(9.0, 4.0, 60.0, (0.4, 0.8, 3.0)))
    turned = axial_diameters(ellipse_mask(9.0, 4.0, 60.0, (0.4, 0.8, 3.0), direction=rotated))
    flipped = axial_diameters(ellipse_mask(9.0, 4.0, 60.0, (0.4, 0.8, 3.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)))
    assert turned.long_mm == pytest.approx(plain.long_mm, abs=1e-6)
    assert flipped.short_mm == pytest.approx(plain.short_mm, abs=1e-6)
    assert plain.long_mm == pytest.approx(18.0, abs=0.8)
    assert plain.short_mm == pytest.approx(8.0, abs=0.8)


def test_an_empty_mask_measures_zero_and_one_voxel_measures_its_size():
    empty = axial_diameters(sitk.Image(5, 5, 3, sitk.sitkUInt8))
    assert (empty.long_mm, empty.short_mm, empty.slice_index) == (0.0, 0.0, -1)
    one = sitk.Image(5, 5, 3, sitk.sitkUInt8)
    one.SetSpacing((0.5, 0.5, 2.0))
    one[2, 2, 1] = 1
    d = axial_diameters(one)
    assert d.slice_index == 1 and 0.0 < d.short_mm <= d.long_mm <= 0.5 * np.sqrt(2) + 1e-9
