"""CT volume I/O and point geometry.

Conventions: SimpleITK/ITK/DICOM world coordinates are LPS millimetres; Slicer shows RAS millimetres
(x and y negated). Voxel indices are (i, j, k) = (x, y, z) in ITK order; numpy arrays from SimpleITK are
indexed [k, j, i] = [z, y, x].
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, PointError
from .vocabulary import PointSpace

logger = logging.getLogger(__name__)

# Spacing outside this range (mm) is not a CT a radiologist would read nodules on.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 10.0


def read_ct(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a CT from a DICOM series folder or a NIfTI/NRRD/MHA file and validate it.

    series_uid: which series of a DICOM folder that holds several (dicom.series.find_series).
    Returns a float32-free copy in its original pixel type; geometry (origin, spacing, direction) is kept.
    Raises InputImageError naming the path and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"CT not found: {path}")
    if path.is_dir():
        image = _read_dicom_folder(path, series_uid)
    else:
        _check_file_spacing(path)
        check_nifti_complete(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputImageError(f"cannot read CT file {path}: {_first_line(exc)}") from exc
    validate_ct(image, source=str(path))
    return image


def check_nifti_complete(path: Path) -> None:
    """ITK reads a NIfTI file that was cut short without a word, the missing voxels as 0 HU (soft tissue): refuse
    it, naming the file. A .nii.gz is decompressed to its end (gzip checks its length and CRC); NRRD and MetaImage
    readers already fail on short data."""
    name = Path(path).name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
            header = f.read(540)
            n_bytes = len(header) + sum(len(chunk) for chunk in iter(lambda: f.read(1 << 22), b""))
    except (EOFError, OSError, zlib.error) as exc:
        raise InputImageError(f"{path}: the compressed data is damaged or ends early ({exc})") from exc
    expected = _nifti_expected_bytes(header)
    if expected is not None and n_bytes < expected:
        raise InputImageError(f"{path}: the file holds {n_bytes} bytes but its NIfTI header promises {expected} "
                              "(header plus voxels): it was cut short")


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + voxels x bytes per voxel from a NIfTI-1 or -2 header; None when it is neither."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack_from(order + "i", header)[0] == 348:
            dims = struct.unpack_from(order + "8h", header, 40)
            (bitpix,), (vox_offset,) = struct.unpack_from(order + "h", header, 72), \
                struct.unpack_from(order + "f", header, 108)
            break
        if len(header) >= 540 and struct.unpack_from(order + "i", header)[0] == 540:
            dims = struct.unpack_from(order + "8q", header, 16)
            (bitpix,), (vox_offset,) = struct.unpack_from(order + "h", header, 14), \
                struct.unpack_from(order + "q", header, 168)
            break
    else:
        return None
    n_voxels = int(np.prod([max(int(d), 1) for d in dims[1:1 + max(1, min(int(dims[0]), 7))]]))
    return int(vox_offset) + n_voxels * int(bitpix) // 8


def _check_file_spacing(path: Path) -> None:
    """ITK silently reads a missing spacing as 1 mm; refuse NRRD headers without one and NIfTI pixdim of 0."""
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        header = path.read_bytes()[:65536].split(b"\n\n", 1)[0].lower()
        if b"space directions" not in header and b"spacings" not in header:
            raise InputImageError(f"{path}: NRRD header has neither 'space directions' nor 'spacings'; "
                                  "the voxel spacing in mm is missing")
    elif name.endswith((".nii", ".nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputImageError(f"cannot read CT file {path}: {_first_line(exc)}") from exc
        pixdim = [reader.GetMetaData(f"pixdim[{k}]") for k in (1, 2, 3) if reader.HasMetaDataKey(f"pixdim[{k}]")]
        if any(float(v) == 0.0 for v in pixdim):
            raise InputImageError(f"{path}: NIfTI pixdim {pixdim} holds 0; the voxel spacing in mm is missing")


def _read_dicom_folder(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """The CT series of `folder` (dicom.series: chosen by `series_uid`, checked), read by SimpleITK."""
    from .dicom.series import find_series

    return read_dicom_series(find_series(folder, series_uid), folder)


def read_dicom_series(series, folder: Path) -> sitk.Image:  # noqa: ANN001 - dicom.series.DicomSeries
    """The pixels of a checked series (its files in slice order: slice k is series.headers[k]), validated."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"cannot read DICOM series in {folder}: {_first_line(exc)}") from exc
    validate_ct(image, source=str(folder))
    return image


def validate_ct(image: sitk.Image, source: str = "CT") -> None:
    """Check dimension, spacing, finiteness and Hounsfield range; raise InputImageError if unusable."""
    if image.GetDimension() != 3:
        raise InputImageError(f"{source}: expected a 3D CT, got a {image.GetDimension()}D image")
    size = image.GetSize()
    if min(size) < 2:
        raise InputImageError(f"{source}: expected a 3D CT with at least 2 voxels per axis, got size {size}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{source}: expected a single-channel CT, got "
                              f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    spacing = image.GetSpacing()
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputImageError(
            f"{source}: spacing {tuple(round(s, 4) for s in spacing)} mm is missing or absurd; "
            f"expected each axis in [{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm"
        )
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).sum())
        raise InputImageError(f"{source}: {n_bad} voxels are NaN or Inf; expected finite Hounsfield units")
    if array.dtype == np.uint8:
        raise InputImageError(f"{source}: 8-bit pixels cannot hold Hounsfield units; expected a CT in HU")
    lo, hi = float(array.min()), float(array.max())
    # Air is about -1000 HU; a CT crop without anything below -500 HU is not lung CT (MR, PET, or rescaled).
    if lo > -500 or hi < -200 or hi > 40000:
        raise InputImageError(
            f"{source}: intensity range [{lo:g}, {hi:g}] does not look like CT in Hounsfield units "
            "(expected air near -1000 HU and soft tissue near 0 HU)"
        )


def ras_to_lps(point: Sequence[float]) -> np.ndarray:
    """RAS millimetres (Slicer) to LPS millimetres (ITK): negate x and y."""
    p = np.asarray(point, dtype=float)
    return np.array([-p[0], -p[1], p[2]])


lps_to_ras = ras_to_lps  # the same sign flip both ways


def point_to_lps(point: Sequence[float], space: PointSpace | str, image: sitk.Image) -> np.ndarray:
    """Convert a point given in RAS mm, LPS mm or voxel index (i, j, k) to LPS mm; check it is inside `image`."""
    if len(point) != 3:
        raise PointError(f"a point needs 3 coordinates, got {len(point)}: {tuple(point)}")
    if not np.all(np.isfinite(np.asarray(point, dtype=float))):
        raise PointError(f"point {tuple(point)} has non-finite coordinates")
    if space == PointSpace.RAS:
        lps = ras_to_lps(point)
    elif space == PointSpace.LPS:
        lps = np.asarray(point, dtype=float)
    elif space == PointSpace.IJK:
        lps = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in point]))
    else:
        raise PointError(f"unknown point space {space!r}; expected one of {PointSpace.names()}")
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex(lps.tolist()))
    size = np.asarray(image.GetSize())
    if np.any(index < -0.5) or np.any(index > size - 0.5):
        raise PointError(
            f"point {tuple(np.round(point, 2))} ({space.upper()}) lies outside the image: voxel index "
            f"{tuple(np.round(index, 1))} is not within size {tuple(int(s) for s in size)}"
        )
    return lps


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
