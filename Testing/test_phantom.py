"""The synthetic chest CT: deterministic, CT-like in Hounsfield units, with the nodule where it says."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib.finding import mask_size
from LungNoduleExplainLib.phantom import make_phantom_ct
from LungNoduleExplainLib.volume import validate_ct

SMALL = {"size": (96, 96, 48), "diameter_mm": 8.0, "n_vessels": 6}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_ct(seed=3)


def test_the_phantom_is_a_valid_int16_ct_with_realistic_geometry(phantom):
    ct, centre, mask = phantom  # unpacks as the promised 3-tuple
    assert ct.GetPixelID() == sitk.sitkInt16
    assert ct.GetSize() == (192, 192, 96)
    assert ct.GetSpacing() == pytest.approx((0.7, 0.7, 1.25))
    assert ct.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    validate_ct(ct, source="phantom")  # raises if it does not look like a CT
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == ct.GetSize() and mask.GetOrigin() == ct.GetOrigin()


def test_tissues_have_their_hounsfield_values(phantom):
    ct, centre, mask = phantom
    hu = sitk.GetArrayFromImage(ct).astype(float)
    nodule = sitk.GetArrayFromImage(mask).astype(bool)
    core = sitk.GetArrayFromImage(sitk.BinaryErode(mask, (2, 2, 1))).astype(bool)  # away from partial volume
    assert 30 <= hu[core].mean() <= 60
    assert hu[0, 0, 0] < -900  # air in the corner
    # The right lung (patient right = -x) near the nodule but outside it is lung parenchyma.
    index = np.array(ct.TransformPhysicalPointToIndex((centre[0], centre[1] + 12.0, centre[2])))
    assert not nodule[index[2], index[1], index[0]]
    around = hu[index[2] - 1:index[2] + 2, index[1] - 2:index[1] + 3, index[0] - 2:index[0] + 3]
    assert -950 <= np.median(around) <= -750
    body_centre = hu[48, 96 - 40:96 - 30, 90:102]  # anterior mediastinum: soft tissue
    assert -50 <= np.median(body_centre) <= 120


def test_the_nodule_has_the_requested_diameter_around_its_centre(phantom):
    ct, centre, mask = phantom
    diameter, volume = mask_size(mask)
    assert diameter == pytest.approx(14.0, rel=0.08)
    index = ct.TransformPhysicalPointToIndex(centre)
    assert sitk.GetArrayViewFromImage(mask)[index[2], index[1], index[0]] == 1
    assert centre[0] < 0, "the nodule is in the patient's right lung (-x in LPS)"


def test_the_phantom_is_deterministic_for_a_seed_and_differs_between_seeds():
    a = make_phantom_ct(seed=1, **SMALL)
    b = make_phantom_ct(seed=1, **SMALL)
    c = make_phantom_ct(seed=2, **SMALL)
    assert np.array_equal(sitk.GetArrayViewFromImage(a.ct), sitk.GetArrayViewFromImage(b.ct))
    assert a.nodule_center_lps == b.nodule_center_lps
    assert not np.array_equal(sitk.GetArrayViewFromImage(a.ct), sitk.GetArrayViewFromImage(c.ct))


def test_a_lobulated_nodule_is_bigger_than_its_core_sphere():
    round_ = make_phantom_ct(seed=4, **SMALL)
    lobulated = make_phantom_ct(seed=4, lobulated=True, **SMALL)
    assert mask_size(lobulated.nodule_mask)[1] > 1.1 * mask_size(round_.nodule_mask)[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"diameter_mm": 80.0}, "outside the supported"),
    ({"size": (8, 96, 48)}, "size >= 16"),
    ({"size": (64, 64, 32), "diameter_mm": 30.0}, "does not fit"),
])
def test_impossible_phantoms_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom_ct(seed=0, **kwargs)
