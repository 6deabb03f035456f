"""The report's title from the DICOM header (StudyInfo) and the colour table of what each call means."""

from __future__ import annotations

import SimpleITK as sitk
import numpy as np
import pytest

from LungNoduleExplainLib.meaning import MEANING, TONE_COLOURS, colour, tone
from LungNoduleExplainLib.study import StudyInfo, read_study_info


def test_a_real_dicom_folder_names_its_patient_date_and_series(ct_dir):
    study = read_study_info(ct_dir / "LIDC-IDRI-0001" / "dicom")
    assert study.name == "dicom"
    assert study.patient_id == "LIDC-IDRI-0001"
    assert study.study_date == "2000-01-01"  # DICOM DA 20000101
    assert study.modality == "CT" and study.series_number == "3000566"
    assert study.title() == "LIDC-IDRI-0001 · CT 2000-01-01 · series 3000566"
    assert "dicom" not in study.title()
    assert ("Patient ID", "LIDC-IDRI-0001") in study.rows()


def test_a_nifti_or_nrrd_file_keeps_its_file_name(tmp_path):
    path = tmp_path / "chest_ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16)), str(path))
    study = read_study_info(path)
    assert study == StudyInfo(name="chest_ct.nii.gz") and study.title() == "chest_ct.nii.gz"
    assert not study.from_dicom and study.rows() == []


def test_a_folder_without_a_readable_header_falls_back_to_its_name(tmp_path):
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "notes.txt").write_text("not DICOM")
    assert read_study_info(tmp_path / "scan").title() == "scan"


def test_a_patient_name_other_than_the_id_and_a_series_description_are_shown():
    study = StudyInfo(name="dicom", patient_id="P7", patient_name="DOE JANE", study_date="2021-03-04",
                      series_description="Lung 1.0 B60f", series_number="4", modality="CT")
    assert study.title() == "P7 (DOE JANE) · CT 2021-03-04 · series 4 “Lung 1.0 B60f”"


@pytest.mark.parametrize("name, positive, expected", [
    ("calcified", True, "reassuring"), ("round", True, "reassuring"), ("malignant", False, "reassuring"),
    ("malignant", True, "concerning"), ("spiculated", True, "concerning"), ("lobulated", True, "concerning"),
    ("ill_defined_margin", True, "concerning"), ("non_solid", True, "concerning"), ("obvious", True, "neutral"),
    ("spiculated", False, "neutral"), ("calcified", False, "neutral"), ("my_own_task", True, "neutral"),
])
def test_each_call_takes_the_tone_of_what_it_means_for_the_patient(name, positive, expected):
    assert tone(name, positive) == expected
    assert colour(name, positive) == TONE_COLOURS[expected]


def test_reassuring_and_concerning_colours_differ_and_every_tone_has_one():
    tones = {t for pair in MEANING.values() for t in pair}
    assert tones <= set(TONE_COLOURS)
    assert len(set(TONE_COLOURS.values())) == 3
