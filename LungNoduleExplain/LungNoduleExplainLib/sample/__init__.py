"""The built-in real CT: LIDC-IDRI-0001 cropped around its nodule, with the LIDC readers' consensus mask.

Real patient data from LIDC-IDRI (The Cancer Imaging Archive), CC BY 3.0: cite it as ATTRIBUTION.txt here says.
Written by Resources/make_sample_data.py; `demo` analyses it and Slicer's sample-data entry loads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputImageError

SAMPLE_DIR = Path(__file__).resolve().parent
SAMPLE_CT = SAMPLE_DIR / "LIDC-IDRI-0001-crop.nrrd"
SAMPLE_READERS_MASK = SAMPLE_DIR / "LIDC-IDRI-0001-readers-mask.nrrd"
SAMPLE_INFO = SAMPLE_DIR / "sample.json"
ATTRIBUTION = SAMPLE_DIR / "ATTRIBUTION.txt"
CITATION = ("LIDC-IDRI: Armato SG III et al., Medical Physics 38:915-931 (2011); data: "
            "doi:10.7937/K9/TCIA.2015.LO9QL9SX (The Cancer Imaging Archive, CC BY 3.0)")


@dataclass(frozen=True)
class SampleCT:
    ct: sitk.Image
    readers_mask: sitk.Image
    point_lps: tuple[float, float, float]
    info: dict


def load_sample() -> SampleCT:
    """The sample CT, its readers' mask and the point to click, each file checked against sample.json's SHA256."""
    try:
        info = json.loads(SAMPLE_INFO.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputImageError(f"the built-in sample {SAMPLE_INFO} cannot be read ({exc}); reinstall the package") \
            from exc
    for path in (SAMPLE_CT, SAMPLE_READERS_MASK):
        expected = info.get("sha256", {}).get(path.name)
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise InputImageError(f"the built-in sample file {path} is missing ({exc}); reinstall the package") \
                from exc
        if actual != expected:
            raise InputImageError(f"the built-in sample file {path} does not match its SHA256 in {SAMPLE_INFO} "
                                  f"(expected {expected}, got {actual}); reinstall the package")
    point = tuple(float(v) for v in info["point_lps_mm"])
    return SampleCT(sitk.ReadImage(str(SAMPLE_CT)), sitk.ReadImage(str(SAMPLE_READERS_MASK)), point, info)  # type: ignore[arg-type]
