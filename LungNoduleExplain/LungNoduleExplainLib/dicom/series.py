"""DICOM in: find the CT series in a folder, choose it by SeriesInstanceUID, and refuse what would be misread.

A folder may hold several series (a scout, a lung and a mediastinal kernel, a dose report): one is chosen by its
SeriesInstanceUID, or, when there is only one image series, that one. Headers are read with pydicom (no pixels),
so the checks are cheap; the pixels are then read by SimpleITK from the files in slice order.

Refused, with the file and field named: a modality other than CT, a multi-frame (enhanced) CT, images of
different orientation, slices sheared by gantry tilt, two images at one position, missing slices and irregular
slice spacing (ITK would silently stretch the volume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputImageError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IRREGULAR_SPACING = 0.1  # slice steps may differ from the median by 10% (rounding in ImagePositionPatient)
MISSING_SLICE = 1.5  # a step of 1.5 median steps or more is a missing slice
MAX_SHEAR = 0.01  # sideways drift of a slice per mm along the normal (tan of the tilt): 0.6 degrees


@dataclass(frozen=True)
class DicomSeries:
    """One image series: its files and headers (no pixel data) sorted along the slice normal, ascending, which
    is SimpleITK's slice order, so headers[k] is slice k of the CT read from `files`."""

    uid: str
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]

    @property
    def modality(self) -> str:
        return str(self.headers[0].get("Modality", ""))

    def describe(self) -> str:
        """'1.2.3 (CT, 16 images, series 3000566 “Chest”)': enough to choose, no patient identifier."""
        first = self.headers[0]
        number = f", series {first.SeriesNumber}" if first.get("SeriesNumber") not in (None, "") else ""
        text = f" “{first.SeriesDescription}”" if first.get("SeriesDescription") else ""
        return f"{self.uid} ({self.modality or 'no modality'}, {len(self.files)} images{number}{text})"


def find_series(folder: str | Path, series_uid: str | None = None) -> DicomSeries:
    """The checked CT series of `folder` (its files, not sub-folders): the one with `series_uid`, else the only
    CT image series (or the only image series, to be refused if it is not CT). Raises InputImageError listing the
    series when the choice is ambiguous or missing."""
    folder = Path(folder)
    groups = _series_in(folder)
    if not groups:
        raise InputImageError(f"no DICOM series found in folder {folder}")
    if series_uid is not None:
        if series_uid not in groups:
            raise InputImageError(f"DICOM folder {folder} has no series {series_uid}; it holds: "
                                  f"{_listing(groups)}")
        return check_series(groups[series_uid], folder)
    images = [s for s in groups.values() if s.headers[0].get("Rows")]  # not a dose report or an SR
    ct = [s for s in images if s.modality == "CT" and s.headers[0].get("SOPClassUID") == CT_IMAGE_STORAGE]
    if len(ct) == 1 or (len(images) == 1 and not ct):  # the only CT (beside our SEG, say), or a non-CT to refuse
        return check_series((ct or images)[0], folder)
    raise InputImageError(f"DICOM folder {folder} mixes {len(groups)} series ({_listing(groups)}); "
                          "choose one with --series-uid")


def _listing(groups: dict[str, DicomSeries]) -> str:
    return "; ".join(s.describe() for s in groups.values())


def _series_in(folder: Path) -> dict[str, DicomSeries]:
    """SeriesInstanceUID -> DicomSeries of the DICOM files in `folder` (not its sub-folders)."""
    return _group(sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")))


def series_of_files(files: list[Path], where: str) -> DicomSeries:
    """The checked series made of `files` (e.g. the ones a DICOM database lists for a loaded volume); `where`
    names them in messages."""
    groups = _group([Path(f) for f in files])
    if len(groups) != 1:
        raise InputImageError(f"{where}: expected the files of one DICOM series, found {len(groups)} "
                              f"({_listing(groups) or 'none'})")
    return check_series(next(iter(groups.values())), Path(where))


def _group(paths: list[Path]) -> dict[str, DicomSeries]:
    """SeriesInstanceUID -> DicomSeries of the DICOM files among `paths` (files that are not DICOM are skipped; a
    file that starts as DICOM and breaks off is an error naming it)."""
    found: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # not DICOM (a README, a DICOMDIR's companions)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
            raise InputImageError(f"corrupt DICOM file {path}: {exc}") from exc
        uid = header.get("SeriesInstanceUID")
        if uid and header.get("SOPClassUID"):
            found.setdefault(str(uid), []).append((path, header))
    return {uid: DicomSeries(uid, tuple(p for p, _ in items), tuple(h for _, h in items))
            for uid, items in found.items()}


def check_series(series: DicomSeries, folder: Path) -> DicomSeries:
    """`series` sorted along the slice normal; raises InputImageError on what SimpleITK would misread."""
    first_file, first = series.files[0], series.headers[0]
    if series.modality != "CT":
        raise InputImageError(f"{first_file}: Modality (0008,0060) is {series.modality or 'missing'!r}; expected "
                              f"'CT' (series {series.uid}); this engine reads chest CT only")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise InputImageError(f"{first_file}: a multi-frame (enhanced) CT with {first.NumberOfFrames} frames; "
                              "expected one image per file (classic CT Image Storage)")
    if len(series.files) < 2:
        raise InputImageError(f"DICOM folder {folder} holds a single slice of series {series.uid}; a 3D CT needs at "
                              "least 2 slices")
    orientation = _orientation(series)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([_vector(h, "ImagePositionPatient", f, 3) for f, h in zip(series.files, series.headers)])
    order = np.argsort(positions @ normal, kind="stable")
    series = DicomSeries(series.uid, tuple(series.files[i] for i in order), tuple(series.headers[i] for i in order))
    positions = positions[order]
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    _check_steps(series, folder, along)
    sideways = np.linalg.norm(steps - along[:, None] * normal, axis=1) / along
    tilt = float(first.get("GantryDetectorTilt", 0) or 0)
    if sideways.max() > MAX_SHEAR or abs(tilt) > 0.5:
        angle = np.degrees(np.arctan(float(sideways.max())))
        raise InputImageError(f"DICOM series {series.uid} in {folder} is acquired with gantry tilt "
                              f"(GantryDetectorTilt (0018,1120) {tilt:g} degrees, slices shifted sideways by "
                              f"{angle:.1f} degrees): the slices are not perpendicular to their stacking axis and "
                              "would be read as a distorted volume; resample the series to an untilted one first")
    return series


def _orientation(series: DicomSeries) -> np.ndarray:
    values = [_vector(h, "ImageOrientationPatient", f, 6) for f, h in zip(series.files, series.headers)]
    for path, value in zip(series.files, values):
        if not np.allclose(value, values[0], atol=1e-4):
            raise InputImageError(f"{path}: ImageOrientationPatient (0020,0037) {list(np.round(value, 4))} differs "
                                  f"from the series' {list(np.round(values[0], 4))}; expected one orientation "
                                  "for every slice")
    return values[0]


def _vector(header: Dataset, keyword: str, path: Path, length: int) -> np.ndarray:
    value = header.get(keyword)
    if value is None or len(value) != length:
        raise InputImageError(f"{path}: {keyword} is missing or does not hold {length} numbers; expected it in "
                              "every CT image, to place the slice in space")
    return np.asarray([float(v) for v in value])


def _check_steps(series: DicomSeries, folder: Path, along: np.ndarray) -> None:
    """Distances (mm) between consecutive slices: none zero, none a missing slice, all about equal."""
    if along.min() < 1e-3:
        k = int(np.argmin(along))
        raise InputImageError(f"{series.files[k]} and {series.files[k + 1]} lie at the same position in series "
                              f"{series.uid}; expected one image per position (a duplicate or a second "
                              "acquisition)")
    median = float(np.median(along))
    if along.max() > MISSING_SLICE * median + 1e-3:
        raise InputImageError(f"DICOM series in {folder} has missing slices: gap of {along.max():.2f} mm where "
                              f"the slice spacing is {median:.2f} mm")
    if np.abs(along - median).max() > IRREGULAR_SPACING * median + 1e-3:
        raise InputImageError(f"DICOM series in {folder} has irregular slice spacing: steps from "
                              f"{along.min():.2f} to {along.max():.2f} mm; expected one spacing (resample it "
                              "to a regular one first)")
