"""The result of analysing one clicked nodule: what every face (CLI, report, Slicer) consumes.

All images are on the CT's own grid (same size, spacing, origin, direction as the input CT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import SimpleITK as sitk

from .measurements import AxialDiameters, axial_diameters
from .nodule_check import NoduleCheck
from .volume import lps_to_ras


@dataclass
class OutputResult:
    """One model output (the diagnosis or a manifestation) for one nodule.

    activation_map: float32 image on the CT grid over the patch's box only (an aligned sub-grid: region.py; 0
    outside it), values in [0, 1]. The paper hides values below 0.25 when displaying.
    probability and threshold are on the calibrated scale when the bundle has a calibration (see `calibrated`
    on the Finding); raw_probability and raw_threshold are the network's own score and the manifest's threshold.
    member_probabilities: each ensemble member's probability through the same calibrator (one value for a single
    network: no spread to show).
    """

    name: str
    kind: Literal["diagnosis", "manifestation"]
    description: str
    probability: float
    threshold: float
    activation_map: sitk.Image
    raw_probability: float | None = None
    raw_threshold: float | None = None
    member_probabilities: list[float] = field(default_factory=list)
    # attribution.logit_terms averaged over members: image_map (what the map shows), image_global, descriptors, bias
    logit_terms: dict[str, float] | None = None

    @property
    def descriptor_share(self) -> float | None:
        """Share of the evidence (|image_map| + |image_global| + |descriptors|) that comes from the nodule
        descriptors (size, shape, HU), which no map shows; None without logit terms."""
        if not self.logit_terms:
            return None
        t = self.logit_terms
        total = abs(t["image_map"]) + abs(t["image_global"]) + abs(t["descriptors"])
        return abs(t["descriptors"]) / total if total > 0 else 0.0

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold

    @property
    def has_spread(self) -> bool:
        """True when several ensemble members gave a probability (a single network has no spread)."""
        return len(self.member_probabilities) > 1

    @property
    def member_range(self) -> tuple[float, float] | None:
        """(lowest, highest) member probability, or None for a single network."""
        if not self.has_spread:
            return None
        return min(self.member_probabilities), max(self.member_probabilities)

    @property
    def members_disagree(self) -> bool:
        """The members fall on both sides of the threshold: the call hangs on which network is asked."""
        calls = {p >= self.threshold for p in self.member_probabilities}
        return len(calls) == 2

    @property
    def spread_text(self) -> str:
        """'members 0.71-0.90' (with ', members disagree' when they straddle the threshold), or '' when single."""
        if not self.has_spread:
            return ""
        low, high = self.member_range
        return f"members {low:.2f}-{high:.2f}" + (", members disagree" if self.members_disagree else "")

    @property
    def verdict(self) -> str:
        return "positive" if self.positive else "negative"

    @property
    def shown(self) -> tuple[str, str]:
        """Probability and threshold as shown to people: 2 decimals, more where 2 would make them look equal
        (a "0.57, negative (threshold 0.57)" reads as a contradiction)."""
        return shown_pair(self.probability, self.threshold)


def shown_pair(probability: float, threshold: float, most: int = 4) -> tuple[str, str]:
    for digits in range(2, most + 1):
        p, t = f"{probability:.{digits}f}", f"{threshold:.{digits}f}"
        if p != t:
            break
    return p, t


@dataclass
class Finding:
    """Everything the engine says about one nodule.

    point_lps: the clicked point (LPS mm). segmentation: uint8 mask on the CT grid (1 = nodule).
    segmentation_probability: float32 nnU-Net probability on the CT grid. diameter_mm: equivalent-sphere
    diameter of the segmentation; volume_mm3 its volume (`axial`: its long and short axis on the axial slice).
    prior: what fed the anatomical attention gates
    ("nnunet" at analysis time). timings_s: seconds per stage.
    """

    point_lps: tuple[float, float, float]
    outputs: list[OutputResult]
    segmentation: sitk.Image
    segmentation_probability: sitk.Image
    diameter_mm: float
    volume_mm3: float
    model_name: str
    model_version: str
    prior: str
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    calibrated: bool = False  # probabilities through the bundle's calibration.json (False: raw scores)
    # attribution.map_display: the map method, its scale ("reference" or "per-patch") and the colour legend
    map_display: dict = field(default_factory=dict)
    nodule_check: NoduleCheck | None = None  # is there a nodule at the click (found False: classified anyway)

    @cached_property
    def axial(self) -> AxialDiameters:
        """Long axis and perpendicular short axis (mm) of the segmentation on the axial slice where the long axis
        is greatest, as Lung-RADS and Fleischner measure (measurements.axial_diameters)."""
        return axial_diameters(self.segmentation)

    @property
    def point_ras(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in lps_to_ras(self.point_lps))

    @property
    def diagnosis(self) -> OutputResult:
        return next(o for o in self.outputs if o.kind == "diagnosis")

    def output(self, name: str) -> OutputResult:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"no output named {name!r}; outputs are {[o.name for o in self.outputs]}")

    def summary(self) -> dict:
        """JSON-ready summary (no images): the body of finding.json without file paths."""
        return {
            "point_lps_mm": list(self.point_lps),
            "point_ras_mm": list(self.point_ras),
            "outputs": [{"name": o.name, "kind": o.kind, "description": o.description,
                         "probability": round(float(o.probability), 4), "threshold": float(o.threshold),
                         "positive": bool(o.positive), **_uncertainty(o), **_evidence(o)} for o in self.outputs],
            "calibrated": bool(self.calibrated),
            "map_display": dict(self.map_display),
            "diameter_mm": round(float(self.diameter_mm), 2),
            "long_axis_mm": round(float(self.axial.long_mm), 2),
            "short_axis_mm": round(float(self.axial.short_mm), 2),
            "axial_slice_index": int(self.axial.slice_index),
            "volume_mm3": round(float(self.volume_mm3), 1),
            "model": {"name": self.model_name, "version": self.model_version, "prior": self.prior},
            "device": self.device,
            "timings_s": {k: round(float(v), 4) for k, v in self.timings_s.items()},
            "warnings": list(self.warnings),
            "nodule_check": self.nodule_check.to_json() if self.nodule_check is not None else None,
        }


def _uncertainty(o: OutputResult) -> dict:
    """finding.json fields of the raw score and the members' spread (spread null for a single network)."""
    fields = {"raw_probability": None if o.raw_probability is None else round(float(o.raw_probability), 4),
              "raw_threshold": None if o.raw_threshold is None else float(o.raw_threshold),
              "member_probabilities": [round(float(p), 4) for p in o.member_probabilities],
              "member_spread": None, "members_disagree": None}
    if o.has_spread:
        low, high = o.member_range
        fields.update(member_spread={"min": round(low, 4), "max": round(high, 4),
                                     "sd": round(float(np.std(o.member_probabilities)), 4)},
                      members_disagree=bool(o.members_disagree))
    return fields


def _evidence(o: OutputResult) -> dict:
    """finding.json fields of where the logit comes from (null when the network gave no terms)."""
    if not o.logit_terms:
        return {"logit_terms": None, "descriptor_share": None}
    t = o.logit_terms
    terms = {"image": t["image_map"] + t["image_global"], "image_mapped": t["image_map"],
             "image_global": t["image_global"], "descriptors": t["descriptors"], "bias": t["bias"]}
    return {"logit_terms": {k: round(float(v), 4) for k, v in terms.items()},
            "descriptor_share": round(float(o.descriptor_share), 3)}


def mask_size(mask: sitk.Image) -> tuple[float, float]:
    """(equivalent-sphere diameter mm, volume mm^3) of a binary mask."""
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    volume = voxels * float(np.prod(mask.GetSpacing()))
    diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0) if volume > 0 else 0.0
    return diameter, volume
