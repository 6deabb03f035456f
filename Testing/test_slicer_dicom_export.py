"""Slicer's Export to DICOM (LungNoduleExplainSlicer.DicomExport) on the real MRML libraries: a CT node that came
from the DICOM database (its instance UIDs), a report folder written by analyze, the objects written and handed
to the database's importer."""

from __future__ import annotations

import sys

import pydicom
import pytest

from conftest import REPO_ROOT
from dicom_helpers import centroid_lps, run_analyze, untrained_bundle

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML libraries")
pytest.importorskip("highdicom", reason="the dicom extra is not installed: pip install -e '.[dicom]'")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (needs slicer-core)", allow_module_level=True)

sys.path.insert(0, str(REPO_ROOT / "LungNoduleExplain"))
from LungNoduleExplainSlicer import DicomExport  # noqa: E402


class FakeDatabase:
    """The part of ctkDICOMDatabase the export reads: SOPInstanceUID -> file."""

    def __init__(self, files) -> None:  # noqa: ANN001
        self.files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in files}

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")


def _ct_node(uids: list[str]):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    if uids:
        node.SetAttribute(DicomExport.INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    return scene, node


def test_export_to_dicom_writes_the_objects_and_imports_them_into_the_database(ct_dir, tmp_path):
    patient = "LIDC-IDRI-0003"
    files = sorted((ct_dir / patient / "dicom").glob("*.dcm"))
    out = tmp_path / "report"
    assert run_analyze([str(ct_dir / patient / "dicom"), "--lps", "--point", centroid_lps(ct_dir, patient), "--out",
                        str(out)], untrained_bundle(tmp_path / "bundle")) == 0
    database = FakeDatabase(files)
    scene, node = _ct_node(list(database.files))
    imported = []
    written = DicomExport.exportToDicom(out, node, tmp_path / "dicom", database,
                                        importer=lambda folder, db: imported.append((folder, db)))
    assert imported == [(str(tmp_path / "dicom"), database)]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == sorted(p.name for p in written)
    sr = pydicom.dcmread(tmp_path / "dicom" / "SR-1.dcm")
    assert sr.PatientID == patient and sr.Modality == "SR"


def test_a_ct_not_from_the_dicom_database_is_refused_with_why(tmp_path):
    scene, node = _ct_node([])
    with pytest.raises(ValueError, match="was not loaded from Slicer's DICOM database"):
        DicomExport.exportToDicom(tmp_path, node, tmp_path / "dicom", FakeDatabase([]), importer=print)
    scene, node = _ct_node(["1.2.3"])
    with pytest.raises(ValueError, match="1 of the CT's 1 images are no longer in the DICOM database"):
        DicomExport.exportToDicom(tmp_path, node, tmp_path / "dicom", FakeDatabase([]), importer=print)
    assert not (tmp_path / "dicom").exists()
