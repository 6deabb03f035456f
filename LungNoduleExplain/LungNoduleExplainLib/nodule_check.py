"""Is there a nodule at the click? Decided before classifying, from the segmentation the engine already has.

The classifier answers for whatever patch it is given: a click on lung, a vessel or the chest wall gets a
confident "malignant" too. So `Analyzer.analyze` first checks the nnU-Net component that `NoduleSegmenter` selected
(the one holding the click, else the nearest) against two rules, both from what a nodule is, not fitted to data:

1. The click is on the component: inside it, or within CLICK_TOLERANCE_MM of its nearest voxel centre. 3 mm is
   LIDC's smallest nodule: a structure farther away than a whole smallest nodule is not the one clicked. It also
   absorbs half a slice of 5 mm CT and a click on the rim of a nodule that nnU-Net outlined a little tighter.
2. The component is at least MIN_NODULE_DIAMETER_MM long: LIDC's readers outlined nodules from 3 mm (longest
   diameter) and only marked smaller ones; the longest diameter (3D Feret, to the outer faces of the voxels) is
   used, so an elongated small nodule is not refused for a small equivalent-sphere diameter.
3. The component lies within the field nnU-Net segmented around the click (its crop, 48 x 48 x 40 mm by default,
   made to hold a 30 mm nodule, LIDC's upper bound, with context): one that reaches a face of that field inside the
   image runs on beyond what was looked at, so it is not a focal nodule but chest wall, mediastinum, bone or a
   vessel tree. Faces of the field that lie outside the image do not count (see the next paragraph). A large
   nodule clicked off its centre can reach the default field, so `segment_and_check` first segments once more in a
   field FIELD_GROWTH times as large (96 x 96 x 80 mm: a nodule up to 30 mm clicked anywhere on it stays 18 mm
   clear of its faces) and refuses only a component that reaches that one too.

4. The component is at most MAX_NODULE_DIAMETER_MM long: twice LIDC's upper bound of 30 mm (larger lesions are
   masses), the factor 2 so that measuring in 3D rather than on the axial slice, and nnU-Net's margin, never
   refuse a real nodule; a longer structure in the (larger) field is an organ, not a nodule.

A click outside the component but within the tolerance is accepted with a warning (check the click).

A component that reaches the edge of the scanned volume is NOT refused for that: LIDC VOIs are tight boxes (in z
the nodule +2 mm) and real series are often partial stacks, so real nodules touch the edge. It is reported as a
warning (the size is then a lower bound). Mean HU, the highest probability and the volume are measured and written
for the reader; they decide nothing (calcified nodules are bone-dense, juxtapleural ones touch the chest wall).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError

from .volume import lps_to_ras

logger = logging.getLogger(__name__)

CLICK_TOLERANCE_MM = 3.0  # rule 1: LIDC's smallest nodule; also half a 5 mm slice
MIN_NODULE_DIAMETER_MM = 3.0  # rule 2: LIDC's lower bound of a nodule (longest diameter)
FIELD_GROWTH = 2.0  # rule 3: the second, larger field (per axis)
MAX_NODULE_DIAMETER_MM = 60.0  # rule 4: twice LIDC's 30 mm upper bound of a nodule
_AXES = ("x (first column)", "x (last column)", "y (first row)", "y (last row)", "z (first slice)", "z (last slice)")


@dataclass(frozen=True)
class NoduleCheck:
    """The decision and the facts it rests on (all mm, HU, probabilities in [0, 1]).

    found: a nodule is at the click. reason: one sentence saying what was found (a refusal's message).
    click_inside: the click's voxel belongs to the component. distance_mm: click to the component's nearest voxel
    centre (0 inside; None when nnU-Net segmented nothing). probability_at_click: nnU-Net's probability at the
    click's voxel; max_probability_near_click: its highest value within CLICK_TOLERANCE_MM of the click.
    longest_diameter_mm / equivalent_diameter_mm / volume_mm3 / mean_hu / max_probability: of the component.
    volume_edges: the faces of the scanned volume the component touches; field_edges: the faces of the segmented
    field (inside the image) it touches. warnings: for a found nodule.
    """

    found: bool
    reason: str
    click_inside: bool
    distance_mm: float | None
    probability_at_click: float
    max_probability_near_click: float
    longest_diameter_mm: float
    equivalent_diameter_mm: float
    volume_mm3: float
    mean_hu: float | None
    max_probability: float
    volume_edges: tuple[str, ...] = ()
    field_edges: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        """JSON-ready, rounded: the `nodule_check` field of finding.json."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 3)
        data["volume_edges"], data["field_edges"] = list(self.volume_edges), list(self.field_edges)
        data["warnings"] = list(self.warnings)
        data["rules"] = {"click_tolerance_mm": CLICK_TOLERANCE_MM, "min_nodule_diameter_mm": MIN_NODULE_DIAMETER_MM,
                         "max_nodule_diameter_mm": MAX_NODULE_DIAMETER_MM, "field_growth": FIELD_GROWTH}
        return data


@dataclass(frozen=True)
class NoNodule:
    """A point of a several-point analysis where no nodule was found: its entry in place of a Finding (the
    findings, the report and Slicer say "no nodule found" and why). point_lps: the point (LPS mm)."""

    point_lps: tuple[float, float, float]
    check: NoduleCheck

    @property
    def point_ras(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in lps_to_ras(self.point_lps))

    def summary(self) -> dict:
        """The body of its finding.json: no outputs, the reason and the measured facts."""
        return {"point_lps_mm": list(self.point_lps), "point_ras_mm": list(self.point_ras),
                "no_nodule_found": True, "reason": self.check.reason, "outputs": [],
                "nodule_check": self.check.to_json()}


def refusal_message(point_lps: Sequence[float], check: NoduleCheck) -> str:
    """The NoNoduleError message: where, what was found instead, and the way to classify anyway."""
    return (f"no nodule found at point {tuple(round(float(v), 1) for v in point_lps)} (LPS mm): {check.reason}. "
            "Click on the nodule, or classify anyway for research (--classify-anyway, classify_anyway=True)")


def check_nodule(ct: sitk.Image, mask: sitk.Image, probability: sitk.Image, point_lps: Sequence[float],
                 field_box: tuple[Sequence[int], Sequence[int]] | None = None) -> NoduleCheck:
    """Decide whether the segmented component `mask` (uint8, CT grid) is a nodule at `point_lps` (LPS mm).

    probability: nnU-Net's probability on the CT grid. field_box: the segmented field as CT voxel indices (low
    (i, j, k), high (i, j, k) exclusive; may reach outside the image), see `field_box_of`; None skips rule 3.
    Distances are taken in voxel index units scaled by the spacing (exact for an orthonormal direction matrix).
    """
    spacing = np.asarray(mask.GetSpacing(), dtype=float)[::-1]  # z, y, x
    labels = sitk.GetArrayViewFromImage(mask) > 0
    prob = sitk.GetArrayViewFromImage(probability)
    click = np.asarray(ct.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps]))[::-1]
    voxel = tuple(np.clip(np.round(click).astype(int), 0, np.asarray(labels.shape) - 1))
    at_click = float(prob[voxel])
    near = _max_near(prob, click, spacing, CLICK_TOLERANCE_MM)
    coords = np.argwhere(labels)
    if len(coords) == 0:
        return NoduleCheck(False, "nnU-Net segmented nothing around the point (highest probability within "
                           f"{CLICK_TOLERANCE_MM:g} mm: {near:.2f}); no nodule to classify", False, None, at_click,
                           near, 0.0, 0.0, 0.0, None, float(prob.max()))
    inside = bool(labels[voxel])
    distance = 0.0 if inside else float(np.min(np.linalg.norm((coords - click) * spacing, axis=1)))
    volume = len(coords) * float(np.prod(spacing))
    longest = longest_diameter_mm(coords, spacing)
    hu = sitk.GetArrayViewFromImage(ct)
    edges = _faces(coords, np.zeros(3, int), np.asarray(labels.shape))
    field_edges = ()
    if field_box is not None:
        low, high = np.asarray(field_box[0])[::-1], np.asarray(field_box[1])[::-1]  # z, y, x
        inner = [(low[a] > 0, high[a] < labels.shape[a]) for a in (2, 1, 0)]  # faces inside the image
        touched = _faces(coords, np.maximum(low, 0), np.minimum(high, labels.shape))
        field_edges = tuple(f for f, keep in zip(_AXES, [k for pair in inner for k in pair]) if keep and f in touched)
    facts = dict(click_inside=inside, distance_mm=distance, probability_at_click=at_click,
                 max_probability_near_click=near, longest_diameter_mm=longest,
                 equivalent_diameter_mm=(6.0 * volume / np.pi) ** (1.0 / 3.0), volume_mm3=volume,
                 mean_hu=float(hu[labels].mean()), max_probability=float(prob[labels].max()), volume_edges=edges,
                 field_edges=field_edges)
    return _decide(facts)


def _decide(facts: dict) -> NoduleCheck:
    """Apply the rules of the module docstring to the measured facts."""
    distance, longest, edges = facts["distance_mm"], facts["longest_diameter_mm"], facts["volume_edges"]
    at_edge = f", at the edge of the scanned volume ({', '.join(edges)})" if edges else ""
    size = f"a {longest:.1f} mm structure (equivalent diameter {facts['equivalent_diameter_mm']:.1f} mm)"
    if distance > CLICK_TOLERANCE_MM:
        return NoduleCheck(False, f"the nearest segmented structure is {distance:.1f} mm from the point "
                           f"({size}{at_edge}); nnU-Net's probability at the point is "
                           f"{facts['probability_at_click']:.2f}", **facts)
    if longest < MIN_NODULE_DIAMETER_MM:
        return NoduleCheck(False, f"only a {longest:.1f} mm structure at the point{at_edge}; LIDC counts nodules "
                           f"from {MIN_NODULE_DIAMETER_MM:g} mm", **facts)
    if facts["field_edges"]:
        return NoduleCheck(False, f"{size} that runs out of the field segmented around the point (at "
                           f"{', '.join(facts['field_edges'])}): not a focal nodule but a larger structure (chest "
                           "wall, mediastinum, bone or vessels)", **facts)
    if longest > MAX_NODULE_DIAMETER_MM:
        return NoduleCheck(False, f"{size}{at_edge} at the point: longer than {MAX_NODULE_DIAMETER_MM:g} mm, twice "
                           "LIDC's 30 mm upper bound of a nodule (an organ or a larger structure)", **facts)
    where = "contains the point" if facts["click_inside"] else f"lies {distance:.1f} mm from the point"
    warnings = []
    if not facts["click_inside"]:
        warnings.append(f"the point is {distance:.1f} mm outside the segmented nodule (nnU-Net's probability at "
                        f"the point {facts['probability_at_click']:.2f}): check that the click is on the nodule")
    if edges:
        warnings.append(f"the segmented nodule reaches the edge of the scanned volume ({', '.join(edges)}): part "
                        "of it may lie outside the image, so its size is a lower bound and the classifier sees it "
                        "cut")
    return NoduleCheck(True, f"{size} {where}", warnings=tuple(warnings), **facts)


def segment_and_check(segmenter: Any, ct: sitk.Image, point_lps: Sequence[float]) -> tuple[Any, NoduleCheck]:
    """Segment at the point and check the component (rules 1-3); (SegmentationResult, NoduleCheck).

    segmenter: `segment(ct, point_lps[, crop_mm=])` returning masks on the CT grid and, where it has one, its
    field as `.crop` (a PatchGeometry) and `crop_mm`; without them rule 3 is skipped. When only rule 3 objects,
    the point is segmented again in a field FIELD_GROWTH times as large, and that result is kept.
    """
    seg = segmenter.segment(ct, point_lps)
    check = _check_result(ct, seg, point_lps)
    crop_mm = getattr(segmenter, "crop_mm", None)
    if check.found or not check.field_edges or crop_mm is None or check.distance_mm > CLICK_TOLERANCE_MM \
            or check.longest_diameter_mm < MIN_NODULE_DIAMETER_MM:
        return seg, check
    seg = segmenter.segment(ct, point_lps, crop_mm=[FIELD_GROWTH * c for c in crop_mm])
    return seg, _check_result(ct, seg, point_lps)


def _check_result(ct: sitk.Image, seg: Any, point_lps: Sequence[float]) -> NoduleCheck:
    crop = getattr(seg, "crop", None)
    box = field_box_of(ct, crop) if crop is not None else None
    return check_nodule(ct, seg.mask, seg.probability, point_lps, box)


def field_box_of(ct: sitk.Image, crop) -> tuple[tuple[int, ...], tuple[int, ...]]:  # noqa: ANN001 - PatchGeometry
    """The segmenter's crop (a PatchGeometry on the CT's voxel grid) as CT voxel indices (low, high exclusive)."""
    low = np.round(ct.TransformPhysicalPointToContinuousIndex([float(v) for v in crop.origin])).astype(int)
    return tuple(int(v) for v in low), tuple(int(v) for v in low + np.asarray(crop.size))


def longest_diameter_mm(coords_zyx: np.ndarray, spacing_zyx: np.ndarray) -> float:
    """3D Feret diameter (mm) of voxels given as indices [n, 3] (z, y, x), to the voxels' outer faces: the
    longest distance between voxel centres plus the voxel's own extent along that direction."""
    points = coords_zyx * spacing_zyx
    if len(points) > 4:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # flat (one slice) or collinear: all points, few in practice
            points = np.unique(points, axis=0)
    if len(points) > 4000:  # a flat hull of a large one-slice component: its in-plane outline is enough
        points = points[np.random.default_rng(0).choice(len(points), 4000, replace=False)]
    if len(points) < 2:
        return float(np.sum(spacing_zyx[1:]) / 2.0)  # one voxel: its mean in-plane width
    gaps = points[:, None, :] - points[None, :, :]
    lengths = np.linalg.norm(gaps, axis=2)
    a, b = np.unravel_index(int(np.argmax(lengths)), lengths.shape)
    direction = gaps[a, b] / lengths[a, b]
    return float(lengths[a, b] + np.sum(np.abs(direction) * spacing_zyx))


def _max_near(prob: np.ndarray, click_zyx: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float) -> float:
    """Highest value of `prob` within `radius_mm` of the click (continuous index z, y, x); 0 when none lies there."""
    reach = np.ceil(radius_mm / spacing_zyx).astype(int)
    centre = np.round(click_zyx).astype(int)
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, prob.shape)
    if np.any(hi <= lo):
        return 0.0
    grid = np.meshgrid(*[np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij")
    distance = np.sqrt(sum(((grid[a] - click_zyx[a]) * spacing_zyx[a]) ** 2 for a in range(3)))
    values = prob[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][distance <= radius_mm]
    return float(values.max()) if values.size else 0.0


def _faces(coords_zyx: np.ndarray, low_zyx: np.ndarray, high_zyx: np.ndarray) -> tuple[str, ...]:
    """Names (_AXES) of the faces of the box [low, high) (z, y, x indices) that the component's voxels lie on."""
    touched = []
    for axis, (first, last) in zip((2, 1, 0), zip(_AXES[::2], _AXES[1::2])):
        if coords_zyx[:, axis].min() <= low_zyx[axis]:
            touched.append(first)
        if coords_zyx[:, axis].max() >= high_zyx[axis] - 1:
            touched.append(last)
    return tuple(touched)
