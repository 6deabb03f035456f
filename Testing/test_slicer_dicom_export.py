"""Slicer's Export to DICOM (LungNoduleExplainSlicer.DicomExport, AnalysisLogic.exportDicom) on the real MRML
libraries: a CT node that came from the DICOM database (its instance UIDs), nodule result folders written by analyze
or by the module's analysis runs, the objects written and handed to the database's importer."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pydicom
import pytest

from conftest import REPO_ROOT
from dicom_helpers import centroid_lps, run_analyze, untrained_bundle

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML libraries")
hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed: pip install -e '.[dicom]'")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (needs slicer-core)", allow_module_level=True)

sys.path.insert(0, str(REPO_ROOT / "LungNoduleExplain"))
from test_slicer_logic import (addCt, cleanupLogics, lidc_nrrd, makeLogic, placedPoints, run,  # noqa: E402,F401
                               scene)

from LungNoduleExplainSlicer import DicomExport, NoduleSelection  # noqa: E402


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
    from LungNoduleExplainLib.dicom.export import nodule_folders
    patient = "LIDC-IDRI-0003"
    files = sorted((ct_dir / patient / "dicom").glob("*.dcm"))
    out = tmp_path / "report"
    assert run_analyze([str(ct_dir / patient / "dicom"), "--lps", "--point", centroid_lps(ct_dir, patient), "--out",
                        str(out)], untrained_bundle(tmp_path / "bundle")) == 0
    database = FakeDatabase(files)
    scene, node = _ct_node(list(database.files))
    imported = []
    exported = DicomExport.exportToDicom([("Nodule-1", folder) for folder in nodule_folders(out)], node,
                                         tmp_path / "dicom", database,
                                         importer=lambda folder, db: imported.append((folder, db)))
    assert imported == [(str(tmp_path / "dicom"), database)]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == sorted(exported.files)
    sr = pydicom.dcmread(tmp_path / "dicom" / "SR-1.dcm")
    assert sr.PatientID == patient and sr.Modality == "SR"
    assert exported.patientID == patient and exported.nodules == ["Nodule-1"]
    assert "a Segmentation, 8 Parametric Maps and a Structured Report (TID 1500) of Nodule-1" in exported.describe()


def test_a_ct_not_from_the_dicom_database_is_refused_with_why(tmp_path):
    scene, node = _ct_node([])
    with pytest.raises(DicomExport.NotExportable, match="was not loaded from Slicer's DICOM database"):
        DicomExport.exportToDicom([("Nodule-1", tmp_path)], node, tmp_path / "dicom", FakeDatabase([]),
                                  importer=print)
    scene, node = _ct_node(["1.2.3"])
    with pytest.raises(ValueError, match="1 of the CT's 1 images are no longer in the DICOM database"):
        DicomExport.exportToDicom([("Nodule-1", tmp_path)], node, tmp_path / "dicom", FakeDatabase([]),
                                  importer=print)
    assert not (tmp_path / "dicom").exists()


# --- from the module: the nodules shown, analysed one click at a time -------------------------------------------

@pytest.fixture()
def dicomCt(scene, lidc_nrrd, ct_dir):  # noqa: F811
    """LIDC-IDRI-0001's series as Slicer's DICOM module leaves it: a volume node naming its images' instance UIDs,
    and the database that knows their files."""
    database = FakeDatabase(sorted((ct_dir / "LIDC-IDRI-0001" / "dicom").glob("*.dcm")))
    node = addCt(scene, lidc_nrrd[0])
    node.SetAttribute(DicomExport.INSTANCE_UIDS_ATTRIBUTE, " ".join(database.files))
    return node, database


def test_export_to_dicom_sends_every_shown_nodule_of_the_ct_named_as_in_slicer(scene, dicomCt, lidc_nrrd,
                                                                             tmp_path):  # noqa: F811
    ctNode, database = dicomCt
    logic = makeLogic(scene)
    points = placedPoints(scene, lidc_nrrd, 0.0, 20.0, -20.0)
    requests = logic.nodulesFromMarkups(points)
    assert run(logic, ctNode, requests[:2]).succeeded  # two clicks, then a third analysed on its own
    assert run(logic, ctNode, requests[2:]).succeeded
    shown = NoduleSelection.nodulesToExport(scene, requests[2].key)
    assert [v.name for v in shown] == ["Nodule-1", "Nodule-2", "Nodule-3"]

    def importer(folder: str, db) -> bool:  # Slicer's copies the files into the database's own folder
        assert db is database
        for path in Path(folder).iterdir():
            shutil.copy(path, tmp_path)
        return True

    exported = logic.exportDicom([v.key for v in shown], database, importer)
    assert exported.nodules == ["Nodule-1", "Nodule-2", "Nodule-3"] and exported.patientID == "LIDC-IDRI-0001"
    assert exported.files == ["SEG-1.dcm", *[f"PM-{n}.dcm" for n in range(1, 10)], "SR-1.dcm"]  # 3 outputs each
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(tmp_path / "SR-1.dcm"))
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Nodule-1", "Nodule-2", "Nodule-3"]
    segments = pydicom.dcmread(tmp_path / "SEG-1.dcm").SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Nodule-1", "Nodule-2", "Nodule-3"]
    assert not list(logic.worker.sessionFolder().glob("dicom-*"))  # the written copy went once imported


def test_the_module_says_why_it_cannot_export(scene, dicomCt, lidc_nrrd):  # noqa: F811
    ctNode, database = dicomCt
    logic = makeLogic(scene)
    points = placedPoints(scene, lidc_nrrd, 0.0, 20.0)
    first, second = logic.nodulesFromMarkups(points)
    assert run(logic, ctNode, [first]).succeeded and run(logic, ctNode, [second]).succeeded
    keys = [first.key, second.key]
    with pytest.raises(DicomExport.NotExportable, match="no analysed nodule to export"):
        logic.exportDicom([], database, importer=print)

    uids = ctNode.GetAttribute(DicomExport.INSTANCE_UIDS_ATTRIBUTE)
    ctNode.RemoveAttribute(DicomExport.INSTANCE_UIDS_ATTRIBUTE)  # as a CT loaded from a NRRD file
    with pytest.raises(DicomExport.NotExportable, match="'LIDC-IDRI-0001 CT' was not loaded from Slicer's DICOM"):
        logic.exportDicom(keys, database, importer=print)
    ctNode.SetAttribute(DicomExport.INSTANCE_UIDS_ATTRIBUTE, uids)

    firstRun = NoduleSelection.resultFolder(NoduleSelection.resultTables(scene)[first.key]).parents[1]
    shutil.rmtree(firstRun)  # e.g. a scene saved and opened again: its result files were temporary
    with pytest.raises(DicomExport.NotExportable, match="the result files of Nodule-1 are gone"):
        logic.exportDicom(keys, database, importer=print)
