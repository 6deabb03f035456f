"""DICOM from an analysis already written: a report folder (reports.write_findings' layout) and the DICOM files of
its CT give the same objects `analyze --dicom` writes. Slicer's "Export to DICOM" calls this: its analysis runs in
a worker process that leaves the report folder, and the CT's files are in Slicer's DICOM database.

The Findings are rebuilt from each nodule's finding.json and NRRD files and put onto the series' own grid
(Slicer may have loaded the series with its slices in the other order: the images are resampled, exactly, onto
the grid SimpleITK reads from the files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from ..errors import InputImageError
from ..finding import Finding, OutputResult, mask_size
from .objects import build_dicom_results, write_dicom
from .series import series_of_files


def export_report(report_dir: str | Path, source_files: Sequence[str | Path], target: str | Path) -> list[Path]:
    """Write the DICOM objects of the nodules in `report_dir` about the series made of `source_files` into
    `target` (absent or empty; written whole or not at all); returns the files written."""
    from ..volume import read_dicom_series

    report_dir = Path(report_dir)
    series = series_of_files([Path(f) for f in source_files], f"the DICOM files of the CT ({len(source_files)})")
    ct = read_dicom_series(series, Path(series.files[0]).parent)
    findings = findings_from_report(report_dir, ct)
    return write_dicom(build_dicom_results(findings, ct, series), target)


def findings_from_report(report_dir: Path, grid: sitk.Image) -> list[Finding]:
    """The Findings of the nodules in `report_dir` (those without a nodule left out), their images on `grid`."""
    index = report_dir / "findings.json"
    if not index.is_file():
        raise InputImageError(f"{report_dir} holds no findings.json; expected a folder written by analyze")
    findings = []
    for entry in json.loads(index.read_text(encoding="utf-8"))["nodules"]:
        body = json.loads((report_dir / entry["folder"] / "finding.json").read_text(encoding="utf-8"))
        if body.get("files", {}).get("segmentation"):  # a point without a nodule has nothing to export
            findings.append(_finding(report_dir / entry["folder"], body, grid))
    if not findings:
        raise InputImageError(f"{report_dir}: no analysed nodule to export")
    return findings


def _finding(folder: Path, body: dict, grid: sitk.Image) -> Finding:
    def image(relative: str, interpolator: int) -> sitk.Image:
        picture = sitk.ReadImage(str(folder / relative))
        return sitk.Resample(picture, grid, sitk.Transform(), interpolator, 0.0, picture.GetPixelID())

    files = body["files"]
    outputs = [OutputResult(name=o["name"], kind=o["kind"], description=o["description"],
                            probability=o["probability"], threshold=o["threshold"],
                            activation_map=image(files["maps"][o["name"]], sitk.sitkLinear),
                            raw_probability=o.get("raw_probability"), raw_threshold=o.get("raw_threshold"))
               for o in body["outputs"]]
    model = body["model"]
    mask = image(files["segmentation"], sitk.sitkNearestNeighbor)
    diameter, volume = mask_size(mask)  # exact, as the analysis measured them (finding.json rounds)
    return Finding(point_lps=tuple(body["point_lps_mm"]), outputs=outputs, segmentation=mask,
                   segmentation_probability=image(files["segmentation_probability"], sitk.sitkLinear),
                   diameter_mm=diameter, volume_mm3=volume, model_name=model["name"],
                   model_version=model["version"], prior=model["prior"], device=body.get("device", ""),
                   warnings=body.get("warnings", []), calibrated=body.get("calibrated", False),
                   map_display=body.get("map_display", {}))
