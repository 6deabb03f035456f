"""Nodule descriptors: shape and density of the prior region on a known synthetic nodule."""

from __future__ import annotations

import numpy as np
import pytest

from LungNoduleExplainLib.descriptors import DESCRIPTOR_NAMES, nodule_descriptors

SPACING = (0.7, 0.7, 1.25)  # x, y, z mm: the classifier's patch grid
SHAPE = (32, 64, 64)  # z, y, x


def ellipsoid(radii_mm: tuple[float, float, float]) -> np.ndarray:
    """Boolean [z, y, x] ellipsoid with radii (x, y, z) in mm at the patch centre."""
    z, y, x = np.indices(SHAPE).astype(float)
    c = [(s - 1) / 2 for s in SHAPE]
    rx, ry, rz = radii_mm
    return (((x - c[2]) * SPACING[0] / rx) ** 2 + ((y - c[1]) * SPACING[1] / ry) ** 2
            + ((z - c[0]) * SPACING[2] / rz) ** 2) <= 1.0


def describe(region: np.ndarray, inside_hu: float, outside_hu: float = -850.0) -> dict[str, float]:
    hu = np.where(region, inside_hu, outside_hu).astype(np.float32)
    values = nodule_descriptors(hu, region.astype(np.float32), SPACING)
    assert values.shape == (len(DESCRIPTOR_NAMES),) and np.isfinite(values).all()
    return dict(zip(DESCRIPTOR_NAMES, values.tolist()))


def test_a_sphere_has_its_volume_diameter_and_density() -> None:
    d = describe(ellipsoid((6.0, 6.0, 6.0)), 40.0)
    assert np.exp(d["log_volume_mm3"]) == pytest.approx(4 / 3 * np.pi * 6.0 ** 3, rel=0.1)
    assert d["feret_diameter_mm"] == pytest.approx(12.0, abs=1.5)
    assert d["hu_mean"] == pytest.approx(40.0) and d["hu_std"] == pytest.approx(0.0, abs=1e-3)
    assert d["elongation"] == pytest.approx(1.0, abs=0.1) and d["roundness"] > 0.8
    assert d["shell_hu_mean"] == pytest.approx(-850.0)
    assert d["fraction_above_200hu"] == 0.0 and d["fraction_below_minus400hu"] == 0.0


def test_calcium_ground_glass_and_elongation_show() -> None:
    calcified = describe(ellipsoid((5.0, 5.0, 5.0)), 600.0)
    ground_glass = describe(ellipsoid((5.0, 5.0, 5.0)), -600.0)
    sphere, cigar = describe(ellipsoid((4.0, 4.0, 4.0)), 40.0), describe(ellipsoid((12.0, 3.0, 3.0)), 40.0)
    assert calcified["fraction_above_200hu"] == 1.0 and ground_glass["fraction_below_minus400hu"] == 1.0
    assert cigar["elongation"] > 2.0 * sphere["elongation"]
    assert cigar["roundness"] < sphere["roundness"]


def test_a_soft_prior_is_cut_at_half_and_an_empty_one_falls_back_to_the_centre() -> None:
    region = ellipsoid((5.0, 5.0, 5.0))
    soft = np.where(region, 0.4, 0.0).astype(np.float32)  # nnU-Net unsure everywhere: half its maximum
    hu = np.where(region, 40.0, -850.0).astype(np.float32)
    assert np.allclose(nodule_descriptors(hu, soft, SPACING), nodule_descriptors(hu, region.astype(np.float32),
                                                                                  SPACING))
    empty = nodule_descriptors(hu, np.zeros(SHAPE, np.float32), SPACING)
    assert np.isfinite(empty).all()
    assert dict(zip(DESCRIPTOR_NAMES, empty))["hu_mean"] == pytest.approx(40.0)  # the centre voxel


def test_lobes_lower_solidity_and_raise_radial_variation() -> None:
    sphere = ellipsoid((5.0, 5.0, 5.0))
    z, y, x = np.indices(SHAPE).astype(float)
    c = [(s - 1) / 2 for s in SHAPE]
    lobed = sphere.copy()
    for dx, dy in ((6.0, 0.0), (-6.0, 0.0), (0.0, 6.0), (0.0, -6.0)):  # four 3 mm lobes on the equator
        lobed |= (((x - c[2]) * SPACING[0] - dx) ** 2 + ((y - c[1]) * SPACING[1] - dy) ** 2
                  + ((z - c[0]) * SPACING[2]) ** 2) <= 3.0 ** 2
    round_, lobulated = describe(sphere, 40.0), describe(lobed, 40.0)
    assert round_["solidity"] == pytest.approx(1.0, abs=0.15) and round_["radial_cv"] < 0.1
    assert lobulated["solidity"] < round_["solidity"] - 0.1
    assert lobulated["radial_cv"] > 2.0 * round_["radial_cv"]
    one_voxel = np.zeros(SHAPE, dtype=bool)
    one_voxel[16, 32, 32] = True
    single = describe(one_voxel, 40.0)  # no hull: the convex values
    assert single["solidity"] == 1.0 and single["radial_cv"] == 0.0


def test_the_hull_voxel_count_equals_testing_every_voxel_against_every_facet() -> None:
    from scipy.spatial import ConvexHull
    from LungNoduleExplainLib.descriptors import hull_voxel_count
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.integers(0, 12, size=(int(rng.integers(5, 40)), 3))
        try:
            hull = ConvexHull(points)
        except Exception:  # coplanar draw
            continue
        low, high = points.min(axis=0), points.max(axis=0) + 1
        grid = np.indices(high - low).reshape(3, -1).T + low
        every = int((grid @ hull.equations[:, :3].T + hull.equations[:, 3] <= 1e-6).all(axis=1).sum())
        assert hull_voxel_count(hull, low, high) == every >= len(np.unique(points, axis=0))
