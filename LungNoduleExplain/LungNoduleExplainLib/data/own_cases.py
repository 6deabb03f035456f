"""A hospital's own nodules: a cases CSV + a task configuration -> the `lidc-voi` dataset format.

The CSV (docs/DATA.md has the full description), one row per nodule:

    case_id        unique; letters, digits, '_', '.', '-' (it becomes a file name)
    patient_id     nodules of one patient stay on one side of every split
    ct             a CT file (NIfTI/NRRD/MHA) or a DICOM series folder; relative to the CSV's folder
    mask           a nodule mask file (non-zero = nodule) in the CT's physical space, or empty
    point_x_mm, point_y_mm, point_z_mm, point_space
                   a point on the nodule in mm, point_space `ras` (Slicer) or `lps` (ITK/DICOM); used when
                   `mask` is empty
    diameter_mm    optional with a mask (then the mask's equivalent-sphere diameter), required without one
    <label columns> every column the task configuration names (diagnosis + manifestations), values as its rules
    any other column is copied to the output table unchanged

Each row gets a crop of its CT with `context_mm` of real anatomy around the mask (or around the point, with the
diameter's half added). A row with only a point gets an empty `mask` cell: the classifier then takes its prior
from the segmentation model, and nnU-Net training needs masks, so such rows are not exported for it.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import DatasetError, InputImageError, PointError
from ..tasks import TaskSet, prevalence
from ..vocabulary import PointSpace
from ..volume import point_to_lps, read_ct
from .voi_table import REQUIRED_COLUMNS, read_image, same_grid
from ..progress import Progress, report_count
from .voi_writer import (PrepareSummary, VoiFolderWriter, box_around_point, crop_with_context, equivalent_diameter_mm,
                         mask_bounding_box, mask_centroid_lps, table_cell)

logger = logging.getLogger(__name__)

INPUT_COLUMNS = ("case_id", "patient_id", "ct")
POINT_COLUMNS = ("point_x_mm", "point_y_mm", "point_z_mm")
MM_SPACES = (PointSpace.RAS.value, PointSpace.LPS.value)  # point_space of a table's point: its columns are mm
OWN_SOURCE_COLUMNS = ("source_ct", "source_mask", "mask_source")
DEFAULT_CONTEXT_MM = 30.0
BLANK_CELLS = ("", "na", "nan", "none")  # an unknown label: left out of that output, never an error
_SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Output cells prepare computes; every other cell of a finished row is the CSV's own (see _unit_is_current).
_COMPUTED_COLUMNS = ("ct", "image", "mask", "diameter_mm", "center_x_mm", "center_y_mm", "center_z_mm",
                     *OWN_SOURCE_COLUMNS)


class RowError(DatasetError):
    """One CSV row cannot be used; `reason` is the short category the summary counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OwnCase:
    """One validated CSV row. `line` is its line in the CSV (the header is line 1)."""

    line: int
    case_id: str
    patient_id: str
    ct: Path
    mask: Path | None
    point: tuple[float, float, float] | None
    point_space: str
    diameter_mm: float | None
    row: dict[str, str]

    @property
    def what(self) -> str:
        return f"line {self.line} (case {self.case_id})"


def read_cases_csv(path: str | Path, task_set: TaskSet,
                   summary: PrepareSummary) -> tuple[list[OwnCase], list[str]]:
    """Validate the CSV: returns its usable rows and its column names; bad rows go to `summary.skipped`.

    Raises DatasetError for a problem of the whole file (missing, no rows, a required or label column missing).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"cases CSV {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark is no column
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        # cells beyond the header (an unquoted comma shifts the row) come under the key None: count them;
        # line_num, not a count of rows: blank lines and quoted line breaks are lines of the file too
        rows = [({(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None},
                 len(row.get(None) or ()), reader.line_num) for row in reader]
    missing = [c for c in (*INPUT_COLUMNS, *task_set.columns) if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {columns}. The task configuration "
                           f"{task_set.name!r} needs label columns {task_set.columns}")
    if "mask" not in columns and not all(c in columns for c in POINT_COLUMNS):
        raise DatasetError(f"{path}: needs a 'mask' column or the point columns {list(POINT_COLUMNS)}")
    if not rows:
        raise DatasetError(f"{path}: no case rows")
    cases, seen = [], {}
    for row, extra, line in rows:
        where = f"line {line} (case {row.get('case_id') or '?'})"
        try:
            if extra:
                raise RowError("wrong number of cells", f"{where}: {len(columns) + extra} cells, the header has "
                                                         f"{len(columns)} (an unquoted comma in a cell?)")
            case = _parse_row(row, line, path.resolve().parent, task_set, seen)
        except RowError as exc:
            summary.skip(where, exc.reason, str(exc))
            continue
        seen[case.case_id.lower()] = case.case_id
        cases.append(case)
    return cases, columns


def _parse_row(row: dict[str, str], line: int, base: Path, task_set: TaskSet, seen: dict[str, str]) -> OwnCase:
    case_id = row.get("case_id", "")
    where = f"line {line} (case {case_id or '?'})"
    if not _SAFE_CASE_ID.match(case_id):
        raise RowError("bad case_id", f"{where}: case_id {case_id!r} must be letters, digits, '_', '.', '-'")
    if case_id.lower() in seen:  # c1 and C1 are one file name on Windows and macOS
        raise RowError("duplicate case_id", f"{where}: case_id {case_id!r} is already used by an earlier row "
                                            f"({seen[case_id.lower()]!r}; case ids must differ beyond letter case)")
    if not row.get("patient_id"):
        raise RowError("missing value", f"{where}: empty patient_id")
    for task in task_set.all_tasks:
        value = row.get(task.column, "")
        if value.lower() not in BLANK_CELLS and task.label(value) is None:
            raise RowError("label outside its rule",
                           f"{where}: column {task.column!r} = {value!r} is none of the values of output "
                           f"{task.name!r} (positive {list(task.positive)}, negative {list(task.negative)}; "
                           "leave the cell empty when unknown)")
        if task.readers_column:
            try:  # training would stop on it later; say which line now
                task.target(row)
            except ValueError as exc:
                raise RowError("bad reader ratings", f"{where}: {exc}") from exc
    ct = _resolve(row.get("ct", ""), base)
    if ct is None or not ct.exists():
        raise RowError("missing file", f"{where}: CT {row.get('ct')!r} not found (looked at {ct})")
    mask = _resolve(row.get("mask", ""), base)
    if mask is not None and not mask.is_file():
        raise RowError("missing file", f"{where}: mask {row.get('mask')!r} not found (looked at {mask})")
    point, space = None, (row.get("point_space") or "").lower()
    if any(row.get(c) for c in POINT_COLUMNS):
        try:
            point = tuple(float(row[c]) for c in POINT_COLUMNS)
        except (KeyError, ValueError) as exc:
            raise RowError("bad point", f"{where}: point_x/y/z_mm must all be numbers ({exc})") from exc
        if space not in MM_SPACES:
            raise RowError("bad point", f"{where}: point_space must be {' or '.join(map(repr, MM_SPACES))}, got "
                                        f"{space!r}")
    if mask is None and point is None:
        raise RowError("no mask or point", f"{where}: give a mask file or a point (point_x/y/z_mm, point_space)")
    diameter = None
    if row.get("diameter_mm"):
        try:
            diameter = float(row["diameter_mm"])
        except ValueError as exc:
            raise RowError("bad diameter", f"{where}: diameter_mm {row['diameter_mm']!r} is not a number") from exc
        if not np.isfinite(diameter) or diameter <= 0:
            raise RowError("bad diameter", f"{where}: diameter_mm must be > 0, got {diameter:g}")
    elif mask is None:
        raise RowError("bad diameter", f"{where}: diameter_mm is required when only a point is given")
    return OwnCase(line, case_id, row["patient_id"], ct, mask, point, space, diameter, row)


def _resolve(cell: str, base: Path) -> Path | None:
    if not cell:
        return None
    path = Path(cell).expanduser()
    return path if path.is_absolute() else (base / path)


def mask_on_ct_grid(mask_path: Path, ct: sitk.Image) -> sitk.Image:
    """The mask as uint8 0/1 on the CT's voxel grid; resampled (nearest neighbour) when its grid differs."""
    mask = read_image(mask_path, "mask")
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"mask {mask_path}: expected a 3D single-channel image, got {mask.GetDimension()}D "
                              f"with {mask.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    if same_grid(mask, ct):
        mask = sitk.Cast(mask != 0, sitk.sitkUInt8)
        mask.CopyInformation(ct)
        return mask
    logger.info("mask %s is on another grid than its CT; resampling it (nearest neighbour)", mask_path)
    try:
        return sitk.Resample(sitk.Cast(mask != 0, sitk.sitkUInt8), ct, sitk.Transform(), sitk.sitkNearestNeighbor,
                             0, sitk.sitkUInt8)
    except RuntimeError as exc:
        raise InputImageError(f"mask {mask_path}: cannot be resampled onto its CT "
                              f"({str(exc).strip().splitlines()[-1]})") from exc


def build_case(case: OwnCase, ct: sitk.Image,
               context_mm: float) -> tuple[dict[str, Any], sitk.Image, sitk.Image | None]:
    """The output row, the crop and (when there is a mask) the cropped mask of one case."""
    if case.mask is not None:
        mask = mask_on_ct_grid(case.mask, ct)
        box = mask_bounding_box(sitk.GetArrayViewFromImage(mask))
        if box is None:
            raise RowError("empty mask", f"{case.what}: mask {case.mask} has no nodule voxel on the CT's grid")
        crop, start = crop_with_context(ct, box[0], box[1], context_mm)
        crop_mask = sitk.RegionOfInterest(mask, crop.GetSize(), start)
        center = mask_centroid_lps(crop_mask)
        diameter = case.diameter_mm if case.diameter_mm is not None else equivalent_diameter_mm(crop_mask)
        mask_source = "mask"
    else:
        try:
            center = point_to_lps(case.point, case.point_space, ct)
        except PointError as exc:
            raise RowError("point outside the CT", f"{case.what}: {exc}") from exc
        lo, hi = box_around_point(ct, center, case.diameter_mm / 2.0)
        crop, _ = crop_with_context(ct, lo, hi, context_mm)
        crop_mask, diameter, mask_source = None, case.diameter_mm, "none (point only; prior from segmentation)"
    row: dict[str, Any] = dict(case.row)
    row.update({"center_x_mm": center[0], "center_y_mm": center[1], "center_z_mm": center[2],
                "diameter_mm": diameter, "source_ct": str(case.ct),
                "source_mask": str(case.mask) if case.mask else "", "mask_source": mask_source})
    return row, crop, crop_mask


def prepare_own(cases_csv: str | Path, task_set: TaskSet, out_dir: str | Path, *,
                context_mm: float = DEFAULT_CONTEXT_MM, export_nnunet: bool = True,
                progress: Progress | None = None) -> PrepareSummary:
    """Build a `lidc-voi` folder from a hospital's cases CSV; bad rows and CTs are reported and skipped.

    Each CT is one unit (all its rows are written together; finished CTs are skipped on a rerun). The task
    configuration is saved beside the table as `tasks.json`, so `train --tasks <out>/tasks.json` uses it.
    """
    summary = PrepareSummary()
    cases, columns = read_cases_csv(cases_csv, task_set, summary)
    out_dir = Path(out_dir)
    passthrough = [c for c in columns if c not in (*REQUIRED_COLUMNS, *POINT_COLUMNS, "point_space", "ct")]
    out_columns = list(dict.fromkeys([*REQUIRED_COLUMNS, *passthrough, *POINT_COLUMNS, "point_space",
                                      *OWN_SOURCE_COLUMNS]))
    writer = VoiFolderWriter(out_dir, out_columns, source=str(Path(cases_csv).resolve()),
                             settings={"context_mm": float(context_mm)})
    task_set.save(out_dir / "tasks.json")
    by_ct: dict[Path, list[OwnCase]] = defaultdict(list)
    for case in cases:
        by_ct[case.ct.resolve()].append(case)
    for ct_path, group in list(by_ct.items()):
        patients = sorted({case.patient_id for case in group})
        if len(patients) > 1:  # a patient's nodules would be split across train and test
            for case in group:
                summary.skip(case.what, "patient_id differs within one CT",
                             f"{case.what}: rows of CT {ct_path} name patients {patients}; one CT is one patient")
            del by_ct[ct_path]
    summary.units_total = len(by_ct)
    # Keep a finished CT only while the CSV still says what it wrote; a row edited, removed or moved to another CT
    # must not stay in the table (nor clash with its new CT).
    current = {str(p) for p, group in by_ct.items() if _unit_is_current(writer.unit_rows(str(p)), group)}
    earlier = {row["case_id"] for row in writer.rows}
    writer.forget_units([unit for unit in writer.units if unit not in current])
    for n, (ct_path, group) in enumerate(sorted(by_ct.items()), start=1):
        unit = str(ct_path)
        if unit in current:
            summary.units_resumed += 1
        else:
            _prepare_ct(ct_path, group, writer, summary, context_mm)
        report_count(progress, n, len(by_ct), ct_path.name)
    gone = sorted(earlier - {row["case_id"] for row in writer.rows})
    if gone:
        summary.note(f"{len(gone)} case(s) of an earlier run left the table (their CSV rows are gone or no longer "
                     f"valid): {', '.join(gone[:20])}{' ...' if len(gone) > 20 else ''}")
    summary.counts = {f"{name} positive / negative": f"{pos} / {neg}"
                      for name, (pos, neg) in prevalence(task_set, writer.rows).items()}
    point_only = sum(1 for row in writer.rows if not row["mask"])
    if point_only:
        summary.note(f"{point_only} case(s) have a point but no mask: their `mask` cell is empty, the classifier "
                     "takes their prior from the segmentation model")
    return writer.finish(summary, export_nnunet)


def _unit_is_current(stored: list[dict], group: list[OwnCase]) -> bool:
    """Whether a finished CT's rows are the CSV's rows as they are now: the same cases with the same cells."""
    by_id = {row["case_id"]: row for row in stored}
    if set(by_id) != {case.case_id for case in group}:
        return False
    for case in group:
        expected = {c: v for c, v in case.row.items() if c not in _COMPUTED_COLUMNS}
        expected.update(source_ct=str(case.ct), source_mask=str(case.mask) if case.mask else "")
        if case.diameter_mm is not None:
            expected["diameter_mm"] = table_cell(case.diameter_mm)
        if any(by_id[case.case_id].get(c, "") != v for c, v in expected.items()):
            return False
    return True


def _prepare_ct(ct_path: Path, group: list[OwnCase], writer: VoiFolderWriter, summary: PrepareSummary,
                context_mm: float) -> None:
    try:
        ct = read_ct(ct_path)
    except InputImageError as exc:
        for case in group:
            summary.skip(case.what, "unreadable CT", str(exc))
        return
    rows = []
    for case in group:
        try:
            row, crop, mask = build_case(case, ct, context_mm)
        except (RowError, InputImageError) as exc:
            summary.skip(case.what, getattr(exc, "reason", "unreadable mask"), str(exc))
            continue
        row["image"], row["mask"] = writer.write_case(case.case_id, crop, mask)
        rows.append(row)
    writer.finish_unit(str(ct_path), rows, summary)
