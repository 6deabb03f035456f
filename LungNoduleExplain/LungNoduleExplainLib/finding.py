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
from .volume import lps_to_ras


@dataclass
class OutputResult:
    """One model output (the diagnosis or a manifestation) for one nodule.

    activation_map: float32 image on the CT grid, values in [0, 1] (SAM map, min-max normalised on the patch,
    0 outside the patch). The paper hides values below 0.25 when displaying.
    """

    name: str
    kind: Literal["diagnosis", "manifestation"]
    description: str
    probability: float
    threshold: float
    activation_map: sitk.Image

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold

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
                         "positive": bool(o.positive)} for o in self.outputs],
            "diameter_mm": round(float(self.diameter_mm), 2),
            "long_axis_mm": round(float(self.axial.long_mm), 2),
            "short_axis_mm": round(float(self.axial.short_mm), 2),
            "axial_slice_index": int(self.axial.slice_index),
            "volume_mm3": round(float(self.volume_mm3), 1),
            "model": {"name": self.model_name, "version": self.model_version, "prior": self.prior},
            "device": self.device,
            "timings_s": {k: round(float(v), 4) for k, v in self.timings_s.items()},
            "warnings": list(self.warnings),
        }


def mask_size(mask: sitk.Image) -> tuple[float, float]:
    """(equivalent-sphere diameter mm, volume mm^3) of a binary mask."""
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    volume = voxels * float(np.prod(mask.GetSpacing()))
    diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0) if volume > 0 else 0.0
    return diameter, volume
