"""DICOM out: the Findings of one CT series as a Segmentation, Parametric Maps and a TID 1500 SR (highdicom).

Every object shares the source's patient, study and Frame of Reference (highdicom copies them from the source
headers), gets new Series and SOP Instance UIDs, and says it is for research (ContentQualification RESEARCH;
the SR states it in words). Objects, one series each:

    SEG    one Segmentation, a segment per nodule ("Nodule 1", ...), frames referencing their source slices
    PM     one Parametric Map per nodule and output: the output's activation map, float32 on the CT grid, cropped
           to the box where it is not 0 (0 outside: the network did not see it); the real world value mapping
           says what the values mean
    SR     one Comprehensive 3D SR (report.py), written last and referencing the SEG and the maps

`write_dicom` writes them all into a temporary folder beside the target and renames it into place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .. import __version__
from ..errors import InputImageError
from ..finding import Finding, OutputResult
from ..output_folder import new_folder
from ..region import on_full_grid
from .codes import output_concept
from .series import DicomSeries

logger = logging.getLogger(__name__)

MANUFACTURER = "LungNoduleExplain contributors"
MODEL_NAME = "LungNoduleExplain"
SEG_SERIES_NUMBER = 9100  # maps: 9101, 9102, ...; the SR 9199 (high: out of the way of the scanner's series)
SR_SERIES_NUMBER = 9199


@dataclass
class DicomResults:
    """The objects of one analysis, in the order they are stored (the SR last)."""

    segmentation: hd.seg.Segmentation
    maps: list[hd.pm.ParametricMap]
    report: Dataset

    @property
    def segmentation_and_maps(self) -> list[Dataset]:
        return [self.segmentation, *self.maps]

    @property
    def datasets(self) -> list[Dataset]:
        return [*self.segmentation_and_maps, self.report]


def build_dicom_results(findings: Sequence[Finding], ct: sitk.Image, series: DicomSeries,
                        labels: Sequence[str] | None = None) -> DicomResults:
    """The DICOM objects of `findings` about `ct`, which was read from `series` (same grid: headers[k] is
    slice k). Entries without a nodule (nodule_check.NoNodule, None) are left out: nothing was segmented there.
    labels: each entry's name in the objects (segment label, tracking identifier, map series), e.g. the names a
    viewer gave its points; default "Nodule n" by position, as the report's folders."""
    from .report import build_report

    names = list(labels) if labels is not None else [f"Nodule {n}" for n in range(1, len(findings) + 1)]
    if len(names) != len(findings):
        raise ValueError(f"{len(names)} label(s) for {len(findings)} finding(s)")
    numbered = [(n, f) for n, f in enumerate(findings, start=1) if isinstance(f, Finding)]
    if not numbered:
        raise ValueError("no finding with a nodule to write as DICOM")
    kept, labels = [f for _, f in numbered], [names[n - 1] for n, _ in numbered]
    sources = list(series.headers)
    _check_grid(ct, sources)
    segmentation = build_segmentation(kept, sources, labels, ct)
    maps = [build_map(f, label, o, sources, SEG_SERIES_NUMBER + len(f.outputs) * n + k + 1)
            for n, (f, label) in enumerate(zip(kept, labels)) for k, o in enumerate(f.outputs)]
    report = build_report(kept, labels, sources, segmentation, maps, SR_SERIES_NUMBER)
    return DicomResults(segmentation, maps, report)


def _check_grid(ct: sitk.Image, sources: list[Dataset]) -> None:
    """The CT must be the series as read (slice k at headers[k]); anything else would misplace every frame."""
    if len(sources) != ct.GetSize()[2]:
        raise InputImageError(f"the CT has {ct.GetSize()[2]} slices but its DICOM series {len(sources)} images")
    for k in (0, len(sources) - 1):
        position = np.asarray([float(v) for v in sources[k].ImagePositionPatient])
        if not np.allclose(position, ct.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-2):
            raise InputImageError(f"slice {k} of the CT is not at the ImagePositionPatient of its DICOM image")


def _equipment() -> dict:
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": MODEL_NAME,
            "software_versions": __version__, "device_serial_number": "0"}


def _algorithm(finding: Finding) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=finding.model_name[:64], version=finding.model_version[:64],
                                              family=codes.cid7162.ArtificialIntelligence)


def build_segmentation(findings: Sequence[Finding], sources: list[Dataset], labels: Sequence[str],
                       ct: sitk.Image) -> hd.seg.Segmentation:
    """One binary Segmentation, segment n = findings[n - 1] labelled labels[n - 1], frames [k, row, column] in
    the source slices' order (a mask on a part of the CT's grid is spread over all of it)."""
    masks = np.stack([sitk.GetArrayFromImage(on_full_grid(f.segmentation, ct)) > 0 for f in findings],
                     axis=-1).astype(np.uint8)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=label, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_identification=_algorithm(f),
        anatomic_regions=[codes.SCT.Lung], tracking_id=label, tracking_uid=hd.UID())
        for n, (f, label) in enumerate(zip(findings, labels), start=1)]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, series_description="Lung nodules (research use only)",
        content_description="Lung nodule segmentation, research use only", content_label="NODULES",
        **_equipment())


def build_map(finding: Finding, label: str, output: OutputResult, sources: list[Dataset],
              series_number: int) -> hd.pm.ParametricMap:
    """Output `output`'s activation map of the nodule `label` as a float32 Parametric Map on the CT grid, cropped to
    the box of its non-zero voxels (a whole-CT float map would be hundreds of MB, almost all 0)."""
    volume = _cropped_volume(output.activation_map, sources[0].FrameOfReferenceUID)
    scale = finding.map_display.get("scale", "per-patch") if finding.map_display else "per-patch"
    method = finding.map_display.get("method", "map") if finding.map_display else "map"
    concept = output_concept(output.name, output.description)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=output.name[:16], lut_explanation=f"{method} map: 0 no evidence, 1 {scale} maximum"[:64],
        unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1.0, intercept=0.0,
        quantity_definition=concept)
    return _with_laterality(hd.pm.ParametricMap(
        source_images=sources, pixel_array=volume, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        series_description=f"{label} {output.name} map (research)"[:64],
        content_description=f"Research use only: evidence map of {output.name}"[:64],
        content_label="MAP", **_equipment()))


def _with_laterality(pm: hd.pm.ParametricMap) -> hd.pm.ParametricMap:
    """General Series' Laterality is type 2C for a paired body part (BodyPartExamined CHEST: the lungs): empty,
    as the map covers no one side."""
    pm.Laterality = None
    return pm


def _cropped_volume(image: sitk.Image, frame_of_reference_uid: str) -> hd.Volume:
    """highdicom Volume ([slice, row, column], LPS affine) of the box of `image`'s non-zero voxels (one voxel at
    the index origin when all are 0)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)  # [k, j, i]
    nonzero = np.nonzero(array)
    low = [int(a.min()) if len(a) else 0 for a in nonzero]
    high = [int(a.max()) + 1 if len(a) else 1 for a in nonzero]
    crop = array[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    axes = direction * spacing  # column a: the step of index axis a (i, j, k) in LPS mm
    affine = np.eye(4)
    affine[:3, :3] = axes[:, ::-1]  # highdicom's index order is (k, j, i)
    affine[:3, 3] = image.TransformIndexToPhysicalPoint((low[2], low[1], low[0]))
    return hd.Volume(crop, affine, coordinate_system="PATIENT", frame_of_reference_uid=frame_of_reference_uid)


def write_dicom(results: DicomResults, folder: str | Path) -> list[Path]:
    """Write every object as `<kind>-<n>.dcm` into `folder` (created, must not exist or be empty), through a
    temporary folder beside it renamed into place (output_folder.new_folder): the folder holds all of them or is as
    it was."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"DICOM output folder {folder} exists and is not empty")
    names = ["SEG-1.dcm", *[f"PM-{n}.dcm" for n in range(1, len(results.maps) + 1)], "SR-1.dcm"]
    with new_folder(folder) as staging:
        for name, dataset in zip(names, results.datasets):
            dataset.save_as(staging / name, enforce_file_format=True)
    logger.debug("wrote %d DICOM objects to %s", len(names), folder)
    return [folder / name for name in names]
