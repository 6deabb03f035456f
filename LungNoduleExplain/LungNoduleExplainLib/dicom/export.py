"""DICOM from an analysis already written: a report folder (reports.write_findings' layout) and the DICOM files of
its CT give the same objects `analyze --dicom` writes. Slicer's "Export to DICOM" calls this (export_nodules): its
analysis runs in a worker process that leaves a folder per nodule, and the CT's files are in Slicer's DICOM
database.

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
    return export_nodules(nodule_folders(Path(report_dir)), source_files, target)


def export_nodules(folders: Sequence[str | Path], source_files: Sequence[str | Path], target: str | Path,
                   labels: Sequence[str] | None = None) -> list[Path]:
    """As export_report, for chosen nodule folders (each a report's nodule folder: finding.json and its NRRD
    files; they may come from several analyses of the same CT, as in a viewer that analyses one click at a time),
    named `labels` in the objects (default "Nodule n" by position). A folder without a nodule writes nothing and
    keeps its number."""
    from ..volume import read_dicom_series

    series = series_of_files([Path(f) for f in source_files], f"the DICOM files of the CT ({len(source_files)})")
    ct = read_dicom_series(series, Path(series.files[0]).parent)
    findings = findings_from_folders([Path(f) for f in folders], ct)
    return write_dicom(build_dicom_results(findings, ct, series, labels), target)


def nodule_folders(report_dir: Path) -> list[Path]:
    """The nodule folders of a report, in its order (findings.json)."""
    index = report_dir / "findings.json"
    if not index.is_file():
        raise InputImageError(f"{report_dir} holds no findings.json; expected a folder written by analyze")
    return [report_dir / entry["folder"] for entry in json.loads(index.read_text(encoding="utf-8"))["nodules"]]


def findings_from_folders(folders: Sequence[Path], grid: sitk.Image) -> list[Finding | None]:
    """Per nodule folder its Finding, its images on `grid`; None for a point without a nodule (nothing to
    export)."""
    findings: list[Finding | None] = []
    for folder in folders:
        body = json.loads((folder / "finding.json").read_text(encoding="utf-8"))
        findings.append(_finding(folder, body, grid) if body.get("files", {}).get("segmentation") else None)
    return findings


def findings_from_report(report_dir: Path, grid: sitk.Image) -> list[Finding]:
    """The Findings of the nodules in `report_dir` (those without a nodule left out), their images on `grid`."""
    findings = [f for f in findings_from_folders(nodule_folders(report_dir), grid) if f is not None]
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
