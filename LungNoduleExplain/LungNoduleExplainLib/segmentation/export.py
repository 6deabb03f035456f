"""Export a `lidc-voi` folder to nnU-Net v2's raw dataset format, with patient-grouped folds.

Layout written (nnU-Net's own format, see nnunetv2/documentation/dataset_format.md):

    <out_raw_dir>/Dataset<id>_<name>/imagesTr/<case_id>_0000.nii.gz   CT in HU (int16), padded with air
                                     labelsTr/<case_id>.nii.gz         0 background, 1 nodule (uint8)
                                     dataset.json                      nnU-Net keys + a `lungnodule_explain` block
                                     splits_final.json                 5 folds; a patient's nodules share a fold

Padding (docs/SEGMENTATION.md): the VOIs are tight boxes (z: the nodule plus ~2 mm), while inference sees a crop of
a whole CT around a click. Every VOI is padded by `pad_mm` on each side (x, y, z in mm, rounded up to whole voxels)
with -1000 HU (air) and label 0, and at least up to `min_size_mm` in total, centred. This gives the training
patches room around the nodule so that nnU-Net's own patch sampler rarely pads with its normalised zero (which
is not air), and it keeps the net from learning that a nodule ends where the box ends.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..atomic import write_json_atomic
from ..data.voi_table import NoduleRecord, patient_folds, read_image, read_voi_table
from ..errors import DatasetError
from ..output_folder import new_folder
from ..patch import AIR_HU
from ..progress import Progress, report_count

logger = logging.getLogger(__name__)

DEFAULT_PAD_MM: tuple[float, float, float] = (12.0, 12.0, 16.0)
DEFAULT_MIN_SIZE_MM: tuple[float, float, float] = (48.0, 48.0, 40.0)
DEFAULT_DATASET_ID = 501
DEFAULT_NAME = "LungNodule"
SPLIT_SEED = 12345
_SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

@dataclass(frozen=True)
class ExportedDataset:
    """Where an export went: `folder` is `<raw>/Dataset<id>_<name>`; `case_ids` in table order."""

    folder: Path
    dataset_id: int
    case_ids: tuple[str, ...]
    folds: tuple[tuple[str, ...], ...]


def dataset_name(dataset_id: int, name: str = DEFAULT_NAME) -> str:
    """nnU-Net's folder name `Dataset501_LungNodule`."""
    if not 1 <= int(dataset_id) <= 999:
        raise DatasetError(f"nnU-Net dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9]+", name):
        raise DatasetError(f"nnU-Net dataset name must be letters and digits only, got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def pad_voxels(spacing_xyz: Sequence[float], size_xyz: Sequence[int], pad_mm: Sequence[float],
               min_size_mm: Sequence[float]) -> tuple[list[int], list[int]]:
    """Voxels to add below and above each axis (x, y, z): `pad_mm` per side, then up to `min_size_mm`, centred."""
    lower, upper = [], []
    for spacing, size, pad, min_size in zip(spacing_xyz, size_xyz, pad_mm, min_size_mm):
        per_side = int(np.ceil(pad / spacing - 1e-6))
        total = size + 2 * per_side
        missing = max(0, int(np.ceil(min_size / spacing - 1e-6)) - total)
        lower.append(per_side + missing // 2)
        upper.append(per_side + missing - missing // 2)
    return lower, upper


def pad_voi(image: sitk.Image, mask: sitk.Image, pad_mm: Sequence[float] = DEFAULT_PAD_MM,
            min_size_mm: Sequence[float] = DEFAULT_MIN_SIZE_MM) -> tuple[sitk.Image, sitk.Image]:
    """Pad a VOI (HU) with air and its mask with background; geometry stays exact (origin moves by whole voxels).

    Returns (int16 image, uint8 label image) on the same padded grid.
    """
    lower, upper = pad_voxels(image.GetSpacing(), image.GetSize(), pad_mm, min_size_mm)
    padded = sitk.ConstantPad(sitk.Cast(image, sitk.sitkInt16), lower, upper, AIR_HU)
    label = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8))
    label.CopyInformation(image)
    label = sitk.ConstantPad(label, lower, upper, 0)
    return padded, label


def patient_grouped_splits(records: Sequence[NoduleRecord], n_folds: int = 5,
                           seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """nnU-Net's `splits_final.json` content: [{"train": [case ids], "val": [case ids]}] per fold."""
    folds = patient_folds(list(records), n_folds, seed)
    val_sets = [[records[i].case_id for i in fold] for fold in folds]
    return [{"train": [c for j, v in enumerate(val_sets) if j != k for c in v], "val": list(val)}
            for k, val in enumerate(val_sets)]


def export_nnunet_dataset(voi_folder: str | Path, out_raw_dir: str | Path, dataset_id: int = DEFAULT_DATASET_ID,
                          name: str = DEFAULT_NAME, pad_mm: Sequence[float] = DEFAULT_PAD_MM,
                          min_size_mm: Sequence[float] = DEFAULT_MIN_SIZE_MM, n_folds: int = 5,
                          split_seed: int = SPLIT_SEED, case_ids: Sequence[str] | None = None,
                          overwrite: bool = False, progress: Progress | None = None) -> ExportedDataset:
    """Write `voi_folder` (the `lidc-voi` format) as nnU-Net raw dataset `Dataset<id>_<name>` under `out_raw_dir`.

    `case_ids` limits the export to those rows. The dataset is built under a temporary name in `out_raw_dir`
    and renamed when complete (output_folder.new_folder), so a failure leaves nothing half-written and an
    existing dataset as it was. progress(fraction, message) hears "case i of n". Raises DatasetError if the target
    exists (unless `overwrite`), a case id is not a safe file name, or a mask's grid differs from its image's.
    """
    records = read_voi_table(voi_folder, require_masks=True)
    if case_ids is not None:
        wanted = set(case_ids)
        records = [r for r in records if r.case_id in wanted]
        missing = wanted - {r.case_id for r in records}
        if missing:
            raise DatasetError(f"{Path(voi_folder) / 'nodules.csv'}: case ids not in the table: {sorted(missing)}")
    for record in records:
        if not _SAFE_CASE_ID.match(record.case_id):
            raise DatasetError(f"case_id {record.case_id!r} cannot be an nnU-Net file name; "
                               "expected letters, digits, '_', '.', '-'")
    splits = patient_grouped_splits(records, n_folds, split_seed)
    out_raw_dir = Path(out_raw_dir)
    target = out_raw_dir / dataset_name(dataset_id, name)
    if target.exists() and not overwrite:
        raise DatasetError(f"nnU-Net dataset folder {target} exists already; remove it or pass overwrite=True")
    with new_folder(target) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for n, record in enumerate(records):
            _export_case(record, tmp, pad_mm, min_size_mm)
            report_count(progress, n + 1, len(records), record.case_id)
        write_json_atomic(tmp / "dataset.json", {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "nodule": 1},
            "numTraining": len(records),
            "file_ending": ".nii.gz",
            "name": name,
            "description": "Lung nodules (LIDC-IDRI VOIs padded with air), exported by LungNoduleExplain",
            "lungnodule_explain": {"source": str(Path(voi_folder).resolve()), "pad_mm": list(map(float, pad_mm)),
                                   "min_size_mm": list(map(float, min_size_mm)), "pad_value_hu": AIR_HU,
                                   "split_seed": split_seed,
                                   "patients": {r.case_id: r.patient_id for r in records}},
        })
        write_json_atomic(tmp / "splits_final.json", splits)
    logger.info("exported %d cases (%d patients) to %s", len(records), len({r.patient_id for r in records}), target)
    return ExportedDataset(target, int(dataset_id), tuple(r.case_id for r in records),
                           tuple(tuple(s["val"]) for s in splits))


def _export_case(record: NoduleRecord, folder: Path, pad_mm: Sequence[float],
                 min_size_mm: Sequence[float]) -> None:
    image = read_image(record.image_path)
    mask = read_image(record.mask_path, f"mask of case {record.case_id}", on_grid_of=image)
    mask.CopyInformation(image)
    padded, label = pad_voi(image, mask, pad_mm, min_size_mm)
    sitk.WriteImage(padded, str(folder / "imagesTr" / f"{record.case_id}_0000.nii.gz"), True)
    sitk.WriteImage(label, str(folder / "labelsTr" / f"{record.case_id}.nii.gz"), True)


