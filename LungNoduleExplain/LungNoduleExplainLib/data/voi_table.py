"""The nodule-table dataset format shared by every part of the engine (`../shared/data/lidc-voi`).

A folder holds `nodules.csv` (one row per nodule), `images/<case>.nii.gz` (HU) and `masks/<case>.nii.gz`
(binary nodule mask on the image grid). Required columns: case_id, image, mask, patient_id, center_x_mm,
center_y_mm, center_z_mm (LPS mm), diameter_mm; label columns are whatever the task set names.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import DatasetError, InputImageError
from ..tasks import TaskSet
from ..volume import check_nifti_complete

logger = logging.getLogger(__name__)
GRID_TOLERANCE_MM = 1e-3  # origin
SPACING_TOLERANCE_MM = 1e-4  # as the nnU-Net export and own cases checked before they shared same_grid

TABLE_NAME = "nodules.csv"
REQUIRED_COLUMNS = ("case_id", "image", "mask", "patient_id", "center_x_mm", "center_y_mm", "center_z_mm",
                    "diameter_mm")


@dataclass(frozen=True)
class NoduleRecord:
    """One row of `nodules.csv`, with absolute paths and the raw row for label columns."""

    case_id: str
    patient_id: str
    image_path: Path
    mask_path: Path | None
    center_lps: tuple[float, float, float]
    diameter_mm: float
    row: dict

    def labels(self, task_set: TaskSet) -> list[int | None]:
        return task_set.labels(self.row)

    def targets(self, task_set: TaskSet) -> list[float | None]:
        """Training targets (Task.target); raises DatasetError naming the case and column on a bad readers' cell."""
        try:
            return task_set.targets(self.row)
        except ValueError as exc:
            raise DatasetError(f"case {self.case_id}: {exc}") from exc


def read_voi_table(folder: str | Path, task_set: TaskSet | None = None, *, require_masks: bool = True,
                   check_files: bool = True) -> list[NoduleRecord]:
    """Read and validate `folder/nodules.csv`.

    Raises DatasetError naming the file, row and field on a missing column, unparsable number, missing
    image/mask, or (with `task_set`) a label column the task set needs.
    """
    folder = Path(folder)
    table = folder / TABLE_NAME
    if not table.is_file():
        raise DatasetError(f"{table}: not found; a dataset folder needs {TABLE_NAME}, images/ and masks/")
    with table.open(newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: spreadsheet exports start with a BOM
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        needed = list(REQUIRED_COLUMNS if require_masks else [c for c in REQUIRED_COLUMNS if c != "mask"])
        if task_set is not None:
            needed += [c for c in task_set.columns if c not in needed]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DatasetError(f"{table}: missing column(s) {missing}; found {columns}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{table}: no nodule rows")
    records, seen = [], set()
    for line, row in enumerate(rows, start=2):
        where = f"{table} line {line}"
        case_id = (row.get("case_id") or "").strip()
        if not case_id:
            raise DatasetError(f"{where}: empty case_id")
        if case_id in seen:
            raise DatasetError(f"{where}: duplicate case_id {case_id!r}")
        seen.add(case_id)
        if not (row.get("patient_id") or "").strip():
            raise DatasetError(f"{where}: empty patient_id for case {case_id!r}")
        try:
            center = tuple(float(row[f"center_{a}_mm"]) for a in "xyz")
            diameter = float(row["diameter_mm"])
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: center_*_mm and diameter_mm must be numbers ({exc})") from exc
        if not np.all(np.isfinite(center)) or not np.isfinite(diameter) or diameter < 0:
            raise DatasetError(f"{where}: centre {center} / diameter {diameter} must be finite and >= 0")
        image = folder / row["image"]
        mask_cell = (row.get("mask") or "").strip()
        mask = folder / mask_cell if mask_cell else None
        if check_files:
            if not image.is_file():
                raise DatasetError(f"{where}: image file {image} not found (case {case_id})")
            # a mask the table names must exist even where masks are optional (it would be skipped unseen)
            if (require_masks or mask is not None) and (mask is None or not mask.is_file()):
                raise DatasetError(f"{where}: mask file {mask} not found (case {case_id})")
        records.append(NoduleRecord(case_id, row["patient_id"].strip(), image, mask, center, diameter, dict(row)))
    if task_set is not None:
        _check_label_values(records, task_set, table)
    return records


def _check_label_values(records: Iterable[NoduleRecord], task_set: TaskSet, table: Path) -> None:
    """Every output must have both classes somewhere; unknown values are left out but reported once."""
    for task in task_set.all_tasks:
        values = [r.row.get(task.column) for r in records]
        labels = [task.label(v) for v in values]
        if not any(y == 1 for y in labels) or not any(y == 0 for y in labels):
            logger.warning("%s: output %r (column %r) does not have both classes in this table",
                           table, task.name, task.column)


def read_image(path: Path, what: str = "image", on_grid_of: sitk.Image | None = None) -> sitk.Image:
    """Read one NIfTI/NRRD/MHA file, with an error naming the file when it is corrupt or cut short.

    on_grid_of: the image (the CT) whose voxel grid this one must share, as a mask or probability map does in this
    format; compared by voxel index, a mask elsewhere would be scored and used in the wrong place without a word.
    """
    check_nifti_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise InputImageError(f"cannot read {what} {path}: {lines[-1] if lines else exc}") from exc
    if on_grid_of is not None:
        check_same_grid(image, on_grid_of, f"{what} {path}")
    return image


def _grid(image: sitk.Image) -> str:
    return (f"size {image.GetSize()}, spacing {tuple(round(v, 4) for v in image.GetSpacing())}, "
            f"origin {tuple(round(v, 3) for v in image.GetOrigin())}")


def same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    """Same size, spacing (within 1e-4 mm), origin (within 1e-3 mm) and direction: voxel i of one is voxel i of the
    other."""
    return (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=SPACING_TOLERANCE_MM)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=GRID_TOLERANCE_MM)
            and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4))


def check_same_grid(image: sitk.Image, reference: sitk.Image, what: str) -> None:
    """DatasetError naming `what` and both grids unless `image` lies on `reference`'s grid."""
    if not same_grid(image, reference):
        raise DatasetError(f"{what} is not on the grid of its image: {_grid(image)}; the image has "
                           f"{_grid(reference)} (masks and probability maps must share the image's voxel grid)")


def patient_split(records: list[NoduleRecord], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held_out) with about `fraction` of the PATIENTS held out (at least one; none for fraction 0);
    no patient on both sides."""
    if fraction == 0:
        return list(range(len(records))), []
    patients = sorted({r.patient_id for r in records})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_held = max(1, int(round(fraction * len(patients))))
    held = set(patients[:n_held])
    train = [i for i, r in enumerate(records) if r.patient_id not in held]
    held_out = [i for i, r in enumerate(records) if r.patient_id in held]
    return train, held_out


def patient_folds(records: list[NoduleRecord], n_folds: int, seed: int) -> list[list[int]]:
    """Record indices of each of `n_folds` folds; every patient's nodules fall in one fold."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    patients = sorted({r.patient_id for r in records})
    if len(patients) < n_folds:
        raise DatasetError(f"{len(patients)} patients cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    fold_of = {p: i % n_folds for i, p in enumerate(patients)}
    return [[i for i, r in enumerate(records) if fold_of[r.patient_id] == f] for f in range(n_folds)]
