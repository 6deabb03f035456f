"""The classifier's input patch: METHOD.md's order (percentiles of the VOI, then pad with air) against the older
per-patch channel, on a synthetic VOI whose HU are known."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LungNoduleExplainLib.analysis import voi_like_patch
from LungNoduleExplainLib.patch import INPUT_CHANNELS, SPACING_XYZ_MM, PatchGeometry, extract_patch


def _voi(shape_zyx=(12, 40, 40)) -> sitk.Image:
    """A tight VOI on the patch spacing: lung (-850 HU) with a soft-tissue cube (40 HU) and a few bright voxels."""
    hu = np.full(shape_zyx, -850, np.int16)
    hu[3:9, 12:28, 12:28] = 40
    hu[6, 20, 20:23] = 600
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING_XYZ_MM)
    return image


def _centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def test_percentile_voi_takes_the_percentiles_of_the_voi_and_pads_with_air_as_zero() -> None:
    image = _voi()
    channel = INPUT_CHANNELS.index("percentile-voi")
    patch = extract_patch(image, _centre(image))
    values = sitk.GetArrayFromImage(image).astype(float)
    lo, hi = np.percentile(values, (0.5, 99.5))
    x = patch.image[channel]
    assert not np.isnan(patch.image).any()
    assert x[0, 0, 0] == 0.0  # padding (air, below the VOI's lowest percentile)
    inside = patch.image[channel][10:22, 12:52, 12:52]  # the VOI, centred in the 32 x 64 x 64 patch
    expected = (np.clip(values, lo, hi) - lo) / (hi - lo)
    np.testing.assert_allclose(inside, expected, atol=1e-5)


def test_only_the_older_channel_depends_on_how_much_padding_surrounds_the_voi() -> None:
    image = _voi()
    small = extract_patch(image, _centre(image))
    large = extract_patch(image, _centre(image), size=(96, 96, 48))
    voi_small, voi_large = small.image[:, 10:22, 12:52, 12:52], large.image[:, 18:30, 28:68, 28:68]
    method = INPUT_CHANNELS.index("percentile-voi")
    np.testing.assert_allclose(voi_small[method], voi_large[method], atol=1e-6)
    older = INPUT_CHANNELS.index("percentile")
    assert np.abs(voi_small[older] - voi_large[older]).max() > 0.01


def test_the_click_time_voi_box_marks_only_ct_voxels_inside_the_box() -> None:
    image = _voi((20, 60, 60))
    geometry = PatchGeometry.centred_at(_centre(image))
    centre = _centre(image)
    box = (centre - 5.0, centre + 5.0)
    hu, voi = voi_like_patch(image, geometry, box)
    assert hu.shape == voi.shape == (32, 64, 64)
    assert voi.any() and not voi.all()
    assert (hu[~voi] == -1000).all()  # outside the box or the CT: air
    assert (hu[voi] > -1000).all()  # inside both: the CT's own values
