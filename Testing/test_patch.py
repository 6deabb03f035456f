"""The classifier's input patch: METHOD.md's order (percentiles of the VOI, then pad with air) against the older
per-patch channel, on a synthetic VOI whose HU are known."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LungNoduleExplainLib.patch import INPUT_CHANNELS, SPACING_XYZ_MM, extract_patch


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
    patch = extract_patch(image, _centre(image), channels=INPUT_CHANNELS)
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
    small = extract_patch(image, _centre(image), channels=INPUT_CHANNELS)
    large = extract_patch(image, _centre(image), channels=INPUT_CHANNELS, size=(96, 96, 48))
    voi_small, voi_large = small.image[:, 10:22, 12:52, 12:52], large.image[:, 18:30, 28:68, 28:68]
    method = INPUT_CHANNELS.index("percentile-voi")
    np.testing.assert_allclose(voi_small[method], voi_large[method], atol=1e-6)
    older = INPUT_CHANNELS.index("percentile")
    assert np.abs(voi_small[older] - voi_large[older]).max() > 0.01


def test_the_click_time_voi_box_marks_only_ct_voxels_inside_the_box() -> None:
    image = _voi((20, 60, 60))
    centre = _centre(image)
    box = (centre - 5.0, centre + 5.0)
    patch = extract_patch(image, centre, channels=("hu-window",), voi_box=box, with_descriptors=False)
    hu = patch.image[0] * 2000.0 - 1000.0  # the HU window -1000..1000 back to HU
    voi = patch.voi
    assert hu.shape == voi.shape == (32, 64, 64) and patch.descriptors is None
    assert voi.any() and not voi.all()
    assert np.allclose(hu[~voi], -1000)  # outside the box or the CT: air
    assert (hu[voi] > -999).all()  # inside both: the CT's own values


def test_only_the_channels_asked_for_are_computed_in_the_order_asked() -> None:
    image = _voi()
    both = extract_patch(image, _centre(image), channels=INPUT_CHANNELS)
    one = extract_patch(image, _centre(image), channels=("hu-window", "percentile-voi"))
    order = [INPUT_CHANNELS.index("hu-window"), INPUT_CHANNELS.index("percentile-voi")]
    np.testing.assert_array_equal(one.image, both.image[order])
