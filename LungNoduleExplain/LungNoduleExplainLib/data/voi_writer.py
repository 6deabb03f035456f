"""Writing a `lidc-voi` dataset folder: crops with context, atomic files, resumable progress, a skip summary.

Both preparations (`prepare-lidc` from LIDC-IDRI DICOM, `prepare` from a hospital's own CSV) write through
`VoiFolderWriter`. Work is done in *units* (one CT series: all its nodules are written together). After each unit
the writer rewrites `progress.json` (the finished units and their table rows) atomically (atomic.atomic_path:
temporary name, then `os.replace`), so a crash loses at most the unit in flight and a rerun skips finished units.
`nodules.csv` and `summary.json` are written only when the preparation finishes, and taken away before a run changes
the folder, so an interrupted run never leaves a table that looks complete. Units that were skipped for bad input
are not recorded as finished: a rerun tries them again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path, write_text_atomic
from ..errors import DatasetError
from ..output_folder import start_folder
from .voi_table import REQUIRED_COLUMNS, TABLE_NAME

logger = logging.getLogger(__name__)

PROGRESS_NAME = "progress.json"
SUMMARY_NAME = "summary.json"
PROGRESS_VERSION = 1

# ----------------------------------------------------------------------------------------------------- geometry
def crop_with_context(image: sitk.Image, lo_index: Sequence[int], hi_index: Sequence[int],
                      context_mm: float) -> tuple[sitk.Image, tuple[int, ...]]:
    """Crop `image` to the voxel box [lo_index, hi_index] (inclusive, ITK order i, j, k) grown by `context_mm`.

    The margin is `ceil(context_mm / spacing)` voxels on each side of each axis, clipped to the image, so the crop
    keeps real anatomy (not padding) around the nodule. Returns the crop, whose origin/spacing/direction place it
    exactly where it was (LPS mm), and the crop's start index in `image`.
    """
    size = np.asarray(image.GetSize())
    margin = np.ceil(float(context_mm) / np.asarray(image.GetSpacing()) - 1e-6).astype(int)
    start = np.clip(np.asarray(lo_index, dtype=int) - margin, 0, size - 1)
    stop = np.clip(np.asarray(hi_index, dtype=int) + margin, 0, size - 1)
    if np.any(stop < start):
        raise DatasetError(f"empty crop: box {tuple(lo_index)}..{tuple(hi_index)} is outside image size {tuple(size)}")
    extent = (stop - start + 1).tolist()
    return sitk.RegionOfInterest(image, [int(e) for e in extent], [int(s) for s in start]), tuple(int(s) for s in start)


def box_around_point(image: sitk.Image, center_lps: Sequence[float],
                     half_size_mm: float) -> tuple[list[int], list[int]]:
    """The voxel box (inclusive, ITK i, j, k) spanning `center_lps` +/- `half_size_mm` along each image axis."""
    center = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(c) for c in center_lps]))
    half = float(half_size_mm) / np.asarray(image.GetSpacing())
    lo = np.floor(center - half).astype(int)
    hi = np.ceil(center + half).astype(int)
    return lo.tolist(), hi.tolist()


def mask_bounding_box(mask_zyx: np.ndarray) -> tuple[list[int], list[int]] | None:
    """Inclusive voxel box (ITK order i, j, k) of the non-zero voxels of a [z, y, x] array; None when empty."""
    nonzero = np.argwhere(mask_zyx)
    if not len(nonzero):
        return None
    lo, hi = nonzero.min(axis=0)[::-1], nonzero.max(axis=0)[::-1]
    return lo.tolist(), hi.tolist()


def mask_centroid_lps(mask: sitk.Image) -> np.ndarray | None:
    """Centre of mass of a binary mask's voxels, LPS mm; None when the mask is empty."""
    nonzero = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if not len(nonzero):
        return None
    index_xyz = nonzero.mean(axis=0)[::-1]
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint(index_xyz.tolist()))


def equivalent_diameter_mm(mask: sitk.Image) -> float:
    """Diameter (mm) of the sphere with the mask's volume."""
    volume = float((sitk.GetArrayViewFromImage(mask) > 0).sum()) * float(np.prod(mask.GetSpacing()))
    return float((6.0 * volume / math.pi) ** (1.0 / 3.0))


# ------------------------------------------------------------------------------------------------------- images
def as_int16_if_lossless(image: sitk.Image) -> sitk.Image:
    """HU as int16 (like `lidc-voi`) when the image holds integers that fit; otherwise unchanged."""
    if image.GetPixelID() == sitk.sitkInt16:
        return image
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind not in "iu" or array.min() < -32768 or array.max() > 32767:
        return image
    return sitk.Cast(image, sitk.sitkInt16)


# ------------------------------------------------------------------------------------------------------ summary
@dataclass(frozen=True)
class Skipped:
    """One unit (CT series) or case left out: `reason` is a short category, `message` says what was wrong."""

    what: str
    reason: str
    message: str


@dataclass
class PrepareSummary:
    """What a preparation did: counts, what it skipped and why, and notes (e.g. partially covered nodules)."""

    units_total: int = 0
    units_done: int = 0
    units_resumed: int = 0
    cases_written: int = 0
    cases_total: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    nnunet: str = ""

    def skip(self, what: str, reason: str, message: str) -> None:
        logger.warning("skipped %s (%s): %s", what, reason, message)
        self.skipped.append(Skipped(what, reason, message))

    def note(self, message: str) -> None:
        logger.info("%s", message)
        self.notes.append(message)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped_by_reason"] = self.skipped_by_reason()
        return data

    def format(self) -> str:
        """A few human-readable lines for the console."""
        lines = [f"CT series: {self.units_total}, {self.units_done} prepared now, {self.units_resumed} done before",
                 f"nodules in the table: {self.cases_total} ({self.cases_written} written now)"]
        lines += [f"  {key}: {value}" for key, value in self.counts.items()]
        by_reason = self.skipped_by_reason()
        if by_reason:
            lines.append(f"skipped: {len(self.skipped)} (" + ", ".join(f"{r}: {n}" for r, n in by_reason.items()) + ")")
            lines += [f"  {s.message}" if s.message.startswith(s.what) else f"  {s.what}: {s.message}"
                      for s in self.skipped[:50]]
            if len(self.skipped) > 50:
                lines.append(f"  ... and {len(self.skipped) - 50} more (see {SUMMARY_NAME})")
        lines += [f"note: {n}" for n in self.notes[:20]]
        if len(self.notes) > 20:
            lines.append(f"note: ... and {len(self.notes) - 20} more (see {SUMMARY_NAME})")
        if self.nnunet:
            lines.append(f"nnU-Net raw dataset: {self.nnunet}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- writer
class VoiFolderWriter:
    """Writes `images/`, `masks/`, `nodules.csv` and `progress.json` of one dataset folder, unit by unit.

    `columns`: the table's columns in order (REQUIRED_COLUMNS must be among them); `source`: a description of the
    input (e.g. the LIDC root) stored in progress.json, so that a folder is not resumed from different input;
    `settings` (e.g. the context in mm) likewise, so that a folder is not finished with other crops than it began.
    """

    def __init__(self, out_dir: str | Path, columns: Sequence[str], source: str,
                 settings: dict[str, Any] | None = None) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"table columns lack required {missing}")
        self.out_dir = Path(out_dir)
        self.columns = list(columns)
        self.source = source
        self.settings = dict(settings or {})
        # output_folder's rule for a verb that resumes: continue only a folder of ours (earlier versions left
        # progress.json and no marker), never write into someone else's
        if not (self.out_dir / PROGRESS_NAME).is_file():
            start_folder(self.out_dir, "prepare", overwrite=False, resume=True)
        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
        self._units: dict[str, list[dict]] = {}
        self._table_taken_away = False
        self._load_progress()

    @property
    def progress_path(self) -> Path:
        return self.out_dir / PROGRESS_NAME

    def _load_progress(self) -> None:
        if not self.progress_path.is_file():
            return
        try:
            data = json.loads(self.progress_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{self.progress_path}: unreadable ({exc}); delete it to start over") from exc
        if data.get("source") != self.source:
            raise DatasetError(f"{self.out_dir} was prepared from {data.get('source')!r}, not {self.source!r}; "
                               "use another --out folder or delete it")
        before = data.get("settings", self.settings)  # absent in folders of earlier versions
        changed = {k: (before.get(k), v) for k, v in self.settings.items() if before.get(k) != v}
        if changed:
            raise DatasetError(f"{self.progress_path}: this folder was begun with " + ", ".join(
                f"{k} {old!r}, not {new!r}" for k, (old, new) in changed.items()) +
                "; rerun with the same setting or use another --out folder")
        self._units = {key: list(rows) for key, rows in data.get("units", {}).items()}

    def is_done(self, unit: str) -> bool:
        return unit in self._units

    @property
    def units(self) -> list[str]:
        return list(self._units)

    def unit_rows(self, unit: str) -> list[dict]:
        """The table rows `unit` wrote when it was finished; empty when it was not."""
        return list(self._units.get(unit, []))

    def forget_units(self, units: Iterable[str]) -> None:
        """Drop finished units whose input changed or is gone; progress.json follows at the next write."""
        units = [u for u in units if u in self._units]
        if units:
            self._take_table_away()
            for unit in units:
                del self._units[unit]

    def _take_table_away(self) -> None:
        """Remove nodules.csv and summary.json before the first change of a run: they describe the folder as it
        was, and an interrupted run must not leave them looking complete over half-rewritten files."""
        if not self._table_taken_away:
            for name in (TABLE_NAME, SUMMARY_NAME):
                (self.out_dir / name).unlink(missing_ok=True)
            self._table_taken_away = True

    @property
    def rows(self) -> list[dict]:
        return [row for rows in self._units.values() for row in rows]

    def write_case(self, case_id: str, image: sitk.Image, mask: sitk.Image | None) -> tuple[str, str]:
        """Write one case's image (and mask, uint8 0/1) atomically; returns their paths relative to the folder."""
        image_rel = f"images/{case_id}.nii.gz"
        self._take_table_away()
        with atomic_path(self.out_dir / image_rel) as tmp:
            sitk.WriteImage(as_int16_if_lossless(image), str(tmp), True)
        if mask is None:
            return image_rel, ""
        mask_rel = f"masks/{case_id}.nii.gz"
        with atomic_path(self.out_dir / mask_rel) as tmp:
            sitk.WriteImage(sitk.Cast(mask > 0, sitk.sitkUInt8), str(tmp), True)
        return image_rel, mask_rel

    def finish_unit(self, unit: str, rows: Iterable[dict], summary: PrepareSummary | None = None) -> None:
        """Record `unit` as done with its table rows (replacing its earlier rows, if any); rewrite progress.json
        atomically; count it in `summary`. nodules.csv follows in `finish`."""
        rows = [{c: table_cell(row.get(c)) for c in self.columns} for row in rows]
        ids = {r["case_id"] for key, others in self._units.items() if key != unit for r in others}
        clash = [r["case_id"] for r in rows if r["case_id"] in ids]
        if clash:
            raise DatasetError(f"unit {unit}: case ids {clash} were already written by another unit")
        self._units[unit] = rows
        self._write_progress()
        if summary is not None:
            summary.units_done += 1
            summary.cases_written += len(rows)

    def _write_progress(self) -> None:
        write_text_atomic(self.progress_path, json.dumps(
            {"version": PROGRESS_VERSION, "source": self.source, "settings": self.settings, "columns": self.columns,
             "units": self._units},
            indent=0))

    def write_table(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.out_dir / TABLE_NAME, buffer.getvalue())

    def write_summary(self, summary: PrepareSummary) -> Path:
        path = self.out_dir / SUMMARY_NAME
        write_text_atomic(path, json.dumps(summary.to_dict(), indent=1) + "\n")
        return path

    def finish(self, summary: PrepareSummary, export_nnunet: bool) -> PrepareSummary:
        """End of a preparation: write progress.json and nodules.csv, export for nnU-Net if asked, write
        summary.json."""
        if self._units or self.progress_path.exists():
            self._write_progress()  # units forgotten since the last unit finished
        if self.rows:
            self.write_table()
        summary.cases_total = len(self.rows)
        if not export_nnunet:
            summary.nnunet = "skipped: --no-nnunet"
        elif self.rows:
            export_for_nnunet(self.out_dir, summary)
        self.write_summary(summary)
        return summary


def table_cell(value: object) -> str:
    """Table cell text: blanks for None/NaN, short floats, everything else as str."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return ""
        return f"{float(value):.6g}" if abs(float(value)) < 1e4 else f"{float(value):.3f}"
    return str(value)


def export_for_nnunet(out_dir: Path, summary: PrepareSummary) -> None:
    """Write the nnU-Net raw dataset `<out>/nnUNet_raw/Dataset..._LungNodule` (segmentation/export.py, which needs
    no nnunetv2 to write the format). Only rows with a mask can be exported.
    """
    from ..segmentation.export import export_nnunet_dataset  # noqa: PLC0415 (segmentation imports this module)
    with (out_dir / TABLE_NAME).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if any(not (row.get("mask") or "").strip() for row in rows):
        summary.nnunet = "skipped: some cases have no mask (point only); nnU-Net training needs a mask for every case"
        return
    n_patients = len({row["patient_id"] for row in rows})
    if n_patients < 2:
        summary.nnunet = f"skipped: {n_patients} patient(s); patient-grouped folds need at least 2"
        return
    try:
        exported = export_nnunet_dataset(out_dir, out_dir / "nnUNet_raw", n_folds=min(5, n_patients), overwrite=True)
    except DatasetError as exc:
        summary.nnunet = f"skipped: {exc}"
        logger.warning("nnU-Net export skipped: %s", exc)
        return
    summary.nnunet = f"{exported.folder} ({len(exported.case_ids)} cases)"
