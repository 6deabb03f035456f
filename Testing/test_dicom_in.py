"""DICOM in (dicom.series): a folder with several series, a chosen series, and series the engine would misread,
made from the real LIDC files by editing one header field each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest

from LungNoduleExplainLib import cli
from LungNoduleExplainLib.dicom.series import find_series
from LungNoduleExplainLib.errors import InputImageError
from LungNoduleExplainLib.study import read_study_info

from dicom_helpers import centroid_lps, run_analyze, untrained_bundle


def _copy(source: Path, target: Path, edit: Callable[[int, pydicom.Dataset], None] | None = None) -> Path:
    """The series in `source` written to `target` in slice order, `edit(k, dataset)` applied to each."""
    target.mkdir(exist_ok=True)
    for k, path in enumerate(find_series(source).files):
        dataset = pydicom.dcmread(path)
        if edit is not None:
            edit(k, dataset)
        dataset.save_as(target / f"{source.parent.name}-{k:03d}.dcm")
    return target


def _link(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for path in source.glob("*.dcm"):
        os.symlink(path, target / f"{source.parent.name}-{path.name}")


def _uid(ct_dir: Path, patient: str) -> str:
    return find_series(ct_dir / patient / "dicom").uid


def test_a_folder_with_several_series_lists_them_and_is_refused_without_a_choice(ct_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    _link(ct_dir / "LIDC-IDRI-0001" / "dicom", mixed)
    _link(ct_dir / "LIDC-IDRI-0003" / "dicom", mixed)
    assert cli.main(["analyze", str(mixed), "--point", "1,2,3", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    for patient, images in (("LIDC-IDRI-0001", 16), ("LIDC-IDRI-0003", 11)):
        assert f"{_uid(ct_dir, patient)} (CT, {images} images" in error
    assert "--series-uid" in error and "LIDC-IDRI" not in error.replace(str(mixed), ""), "no patient id listed"
    with pytest.raises(InputImageError, match="has no series 1.2.3; it holds: "):
        find_series(mixed, "1.2.3")


def test_the_chosen_series_is_analysed_and_its_patient_carried_into_report_and_dicom(ct_dir, tmp_path):
    mixed = tmp_path / "mixed"
    _link(ct_dir / "LIDC-IDRI-0001" / "dicom", mixed)
    _link(ct_dir / "LIDC-IDRI-0003" / "dicom", mixed)
    uid = _uid(ct_dir, "LIDC-IDRI-0003")
    out = tmp_path / "out"
    assert run_analyze([str(mixed), "--series-uid", uid, "--lps", "--point", centroid_lps(ct_dir, "LIDC-IDRI-0003"),
                        "--out", str(out), "--dicom"], untrained_bundle(tmp_path / "bundle")) == 0
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    assert body["study"]["patient_id"] == "LIDC-IDRI-0003"
    seg = pydicom.dcmread(out / "dicom" / "SEG-1.dcm")
    assert seg.PatientID == "LIDC-IDRI-0003" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    series = find_series(mixed, uid)
    assert read_study_info(mixed, file=series.files[0]).patient_id == "LIDC-IDRI-0003"
    beside = tmp_path / "ct-and-results"  # the CT with our own SEG, maps and SR: the CT is the one to analyse
    _link(ct_dir / "LIDC-IDRI-0003" / "dicom", beside)
    for path in (out / "dicom").iterdir():
        os.symlink(path, beside / path.name)
    assert find_series(beside).uid == uid


def _set_modality(k: int, ds: pydicom.Dataset) -> None:
    ds.Modality = "MR"


def _tilt(k: int, ds: pydicom.Dataset) -> None:
    """10 degrees of gantry tilt: each slice shifted in y by its distance along z times tan(10 deg)."""
    ds.GantryDetectorTilt = 10
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y + k * float(ds.SliceThickness) * np.tan(np.radians(10)), z]


def _irregular(k: int, ds: pydicom.Dataset) -> None:
    """From slice 5 on everything 0.5 mm further: one step of 3.0 mm among steps of 2.5 mm."""
    if k >= 5:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.5]


def _duplicate(k: int, ds: pydicom.Dataset) -> None:
    """Slice 4 moved onto slice 3's position (the same image acquired twice)."""
    if k == 4:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z - 2.5]


@pytest.mark.parametrize("edit, message", [
    (_set_modality, "Modality (0008,0060) is 'MR'; expected 'CT'"),
    (_tilt, "is acquired with gantry tilt (GantryDetectorTilt (0018,1120) 10 degrees"),
    (_irregular, "has irregular slice spacing: steps from 2.50 to 3.00 mm"),
    (_duplicate, "lie at the same position"),
], ids=["not-ct", "gantry-tilt", "irregular-spacing", "duplicate-position"])
def test_a_series_the_engine_would_misread_is_refused_naming_what_is_wrong(edit, message, ct_dir, tmp_path, capsys):
    folder = _copy(ct_dir / "LIDC-IDRI-0003" / "dicom", tmp_path / "edited", edit)
    assert cli.main(["analyze", str(folder), "--point", "1,2,3", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and str(folder) in error
    assert not (tmp_path / "out").exists()


def test_an_untouched_copy_is_accepted_so_the_edits_are_what_is_refused(ct_dir, tmp_path):
    folder = _copy(ct_dir / "LIDC-IDRI-0003" / "dicom", tmp_path / "copy")
    series = find_series(folder)
    assert len(series.files) == 11 and series.modality == "CT"
    z = [float(h.ImagePositionPatient[2]) for h in series.headers]
    assert z == sorted(z), "sorted along the slice normal, as SimpleITK reads them"
