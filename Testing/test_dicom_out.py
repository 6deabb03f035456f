"""`analyze --dicom`: the Segmentation, Parametric Maps and TID 1500 SR written from a real LIDC series, judged
by dciodvfy and read back with highdicom against finding.json and the NRRD files of the same run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed: pip install -e '.[dicom]'")

from LungNoduleExplainLib import cli
from LungNoduleExplainLib.dicom import codes as lne
from LungNoduleExplainLib.dicom.objects import write_dicom
from LungNoduleExplainLib.dicom.report import read_report
from LungNoduleExplainLib.dicom.series import find_series
from LungNoduleExplainLib.volume import read_ct

from dicom_helpers import centroid_lps, dciodvfy_errors, run_analyze, untrained_bundle

PATIENT = "LIDC-IDRI-0003"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def run(ct_dir, bundle, tmp_path_factory) -> Path:
    """OUT of `analyze SERIES --dicom` at the real nodule and at a second point on it (two segments)."""
    out = tmp_path_factory.mktemp("dicom") / "out"
    point = centroid_lps(ct_dir, PATIENT)
    moved = ",".join(f"{v + d:.3f}" for v, d in zip(map(float, point.split(",")), (2.0, -2.0, 0.0)))
    assert run_analyze([str(ct_dir / PATIENT / "dicom"), "--lps", "--point", point, "--point", moved,
                        "--out", str(out), "--dicom"], bundle) == 0
    return out


def _read(out: Path, name: str) -> pydicom.Dataset:
    return pydicom.dcmread(out / "dicom" / name)


def _finding(out: Path, n: int) -> dict:
    return json.loads((out / f"nodule-{n:02d}" / "finding.json").read_text())


def test_every_object_passes_dciodvfy_without_errors(run):
    files = sorted((run / "dicom").glob("*.dcm"))
    assert [f.name for f in files] == ["PM-1.dcm", "PM-10.dcm", "PM-11.dcm", "PM-12.dcm", "PM-13.dcm", "PM-14.dcm",
                                       "PM-15.dcm", "PM-16.dcm", "PM-2.dcm", "PM-3.dcm", "PM-4.dcm", "PM-5.dcm",
                                       "PM-6.dcm", "PM-7.dcm", "PM-8.dcm", "PM-9.dcm", "SEG-1.dcm", "SR-1.dcm"]
    for path in files:
        assert dciodvfy_errors(path) == [], path.name


def test_the_objects_carry_the_sources_patient_study_and_frame_of_reference_with_new_uids(run, ct_dir):
    source = find_series(ct_dir / PATIENT / "dicom")
    first = source.headers[0]
    uids = set()
    for path in (run / "dicom").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
            assert ds.get(keyword) == first.get(keyword), (path.name, keyword)
        assert ds.SeriesInstanceUID != first.SeriesInstanceUID
        uids.add((ds.SeriesInstanceUID, ds.SOPInstanceUID))
        if ds.Modality != "SR":
            assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
            assert ds.get("ContentQualification", "RESEARCH") == "RESEARCH"  # PM: research; SEG has no such field
            assert "research use only" in ds.ContentDescription.lower()
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.uid
    assert len({series for series, _ in uids}) == len(uids), "one series per object"


def test_the_segmentation_holds_each_nodules_mask_voxel_for_voxel(run, ct_dir):
    ct = read_ct(ct_dir / PATIENT / "dicom")
    seg = hd.seg.segread(run / "dicom" / "SEG-1.dcm")
    source_uids = {h.SOPInstanceUID for h in find_series(ct_dir / PATIENT / "dicom").headers}
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # SCT Nodule
    for frame in seg.PerFrameFunctionalGroupsSequence:
        assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in source_uids
    for n in (1, 2):
        expected = _nrrd_on_ct(run / f"nodule-0{n}" / "segmentation.nrrd", ct)
        volume = seg.get_volume(segment_numbers=[n], combine_segments=True)  # values: the segment's number
        assert np.array_equal(_on_ct_grid(volume, ct) > 0, expected > 0)


def test_each_parametric_map_holds_its_map_as_float_with_its_meaning(run, ct_dir):
    ct = read_ct(ct_dir / PATIENT / "dicom")
    finding = _finding(run, 2)
    for k, output in enumerate(finding["outputs"]):
        path = run / "dicom" / f"PM-{len(finding['outputs']) + k + 1}.dcm"  # nodule 2's maps follow nodule 1's
        pm = hd.imread(path)
        assert pm.BitsAllocated == 32 and "FloatPixelData" in pm
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.LUTLabel == output["name"][:16]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        concept = lne.output_concept(output["name"], output["description"])
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == concept.value
        expected = _nrrd_on_ct(run / "nodule-02" / "maps" / f"{output['name']}.nrrd", ct)
        got = _on_ct_grid(pm.get_volume(), ct)
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=output["name"])


def _nrrd_on_ct(path: Path, ct: sitk.Image) -> np.ndarray:
    """A NRRD of the report (written on a box of the CT's grid) as an array [k, j, i] of the whole grid, 0 outside."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(sitk.Resample(image, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
                                                image.GetPixelID()))


def _on_ct_grid(volume: hd.Volume, ct: sitk.Image) -> np.ndarray:
    """`volume` (any box of the CT's grid) pasted into a zero array [k, j, i] of the CT's size."""
    array = np.squeeze(volume.array)
    index = np.indices(array.shape).reshape(3, -1)
    lps = volume.affine[:3, :3] @ index + volume.affine[:3, 3:4]
    steps = np.asarray(ct.GetDirection()).reshape(3, 3) * np.asarray(ct.GetSpacing())  # column: LPS step of i, j, k
    ijk = np.rint(np.linalg.solve(steps, lps - np.asarray(ct.GetOrigin())[:, None])).astype(int).T
    grid = np.zeros(ct.GetSize()[::-1], dtype=np.float32)
    grid[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = array.reshape(-1)
    return grid


def test_the_sr_read_back_gives_the_numbers_of_finding_json(run):
    nodules = read_report(_read(run, "SR-1.dcm"))
    assert [n["segment"] for n in nodules] == [1, 2]
    for n, nodule in enumerate(nodules, start=1):
        body = _finding(run, n)
        values = nodule["values"]
        assert values["Long axis"] == pytest.approx(body["long_axis_mm"], abs=0.005)
        assert values["Short axis"] == pytest.approx(body["short_axis_mm"], abs=0.005)
        assert values["Volume"] == pytest.approx(body["volume_mm3"], abs=0.05)
        assert values[lne.EQUIVALENT_SPHERE.meaning] == pytest.approx(body["diameter_mm"], abs=0.005)
        for output in body["outputs"]:
            name, description = output["name"], output["description"]
            assert values[lne.probability_concept(name, description).meaning] == pytest.approx(
                output["probability"], abs=5e-5)
            assert values[lne.threshold_concept(name, description).meaning] == pytest.approx(output["threshold"])
            assert nodule["calls"][lne.output_concept(name, description).meaning] is output["positive"]
        assert nodule["point_lps_mm"] == pytest.approx(body["point_lps_mm"], abs=1e-3)
        assert "Research use only" in nodule["statement"]


def test_the_sr_declares_its_private_coding_scheme_and_lists_every_object_as_evidence(run):
    sr = _read(run, "SR-1.dcm")
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [lne.SCHEME]
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    written = {pydicom.dcmread(p).SOPInstanceUID for p in (run / "dicom").glob("*.dcm") if p.name != "SR-1.dcm"}
    assert written <= evidence
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"


def test_dicom_output_of_a_file_that_is_not_a_dicom_series_is_one_clear_error(ct_dir, tmp_path, capsys):
    nrrd = tmp_path / "ct.nrrd"
    sitk.WriteImage(read_ct(ct_dir / PATIENT / "dicom"), str(nrrd))
    assert cli.main(["analyze", str(nrrd), "--point", "1,2,3", "--dicom", "--out", str(tmp_path / "out")]) == 2
    assert "--dicom needs the CT as a DICOM series folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_dicom_folder_and_no_temporary_files(run, tmp_path, monkeypatch):
    from LungNoduleExplainLib.dicom.objects import DicomResults

    objects = [_read(run, name) for name in ("SEG-1.dcm", "PM-1.dcm")]
    results = DicomResults(objects[0], [objects[1]], _read(run, "SR-1.dcm"))
    calls = []

    def save_then_fail(self, path, **kwargs):  # noqa: ANN001 - pydicom's signature
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, path, **kwargs)

    original = pydicom.Dataset.save_as
    monkeypatch.setattr(pydicom.Dataset, "save_as", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_dicom(results, tmp_path / "dicom")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(pydicom.Dataset, "save_as", original)
    assert [p.name for p in write_dicom(results, tmp_path / "dicom")] == ["SEG-1.dcm", "PM-1.dcm", "SR-1.dcm"]


def test_an_analysis_already_written_exports_to_the_same_dicom_even_from_flipped_images(run, ct_dir, tmp_path):
    """dicom.export (Slicer's Export to DICOM): the report folder + the CT's files give the objects of --dicom,
    also when the NRRDs were written with the slices in the other order (as Slicer may load a series)."""
    from LungNoduleExplainLib.dicom.export import export_report

    flipped = tmp_path / "flipped"
    shutil.copytree(run, flipped)
    for path in flipped.rglob("*.nrrd"):
        sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(path)), [False, False, True]), str(path), True)
    files = sorted((ct_dir / PATIENT / "dicom").glob("*.dcm"))
    written = export_report(flipped, files, tmp_path / "dicom")
    assert [p.name for p in written][-1] == "SR-1.dcm" and len(written) == 18
    assert dciodvfy_errors(written[-1]) == []
    again, first = (hd.seg.segread(folder / "SEG-1.dcm") for folder in (tmp_path / "dicom", run / "dicom"))
    for n in (1, 2):
        volumes = [s.get_volume(segment_numbers=[n], combine_segments=True).array for s in (again, first)]
        assert np.array_equal(*volumes)
    exported, direct = read_report(pydicom.dcmread(written[-1])), read_report(_read(run, "SR-1.dcm"))
    assert len(exported) == len(direct) == 2
    for mine, theirs in zip(exported, direct):  # finding.json holds 4 decimals of each probability
        assert mine["values"] == pytest.approx(theirs["values"], abs=5e-5)
        assert mine["calls"] == theirs["calls"]


def test_a_point_without_a_nodule_is_left_out_and_the_others_keep_their_report_numbers(run, ct_dir):
    from LungNoduleExplainLib.dicom.export import findings_from_report
    from LungNoduleExplainLib.dicom.objects import build_dicom_results
    from LungNoduleExplainLib.nodule_check import NoNodule

    from LungNoduleExplainLib.region import fit, mask_box

    ct = read_ct(ct_dir / PATIENT / "dicom")
    finding = findings_from_report(run, ct)[0]
    voxels = int(sitk.GetArrayViewFromImage(finding.segmentation).sum())
    finding.segmentation = fit(finding.segmentation, ct, mask_box(finding.segmentation, margin=2))  # a part of it
    results = build_dicom_results([NoNodule((0.0, 0.0, 0.0), check=None), finding], ct,
                                  find_series(ct_dir / PATIENT / "dicom"))
    assert [s.SegmentLabel for s in results.segmentation.SegmentSequence] == ["Nodule 2"]
    assert int(hd.seg.Segmentation.from_dataset(results.segmentation).get_volume().array.sum()) == voxels
    assert {m.SeriesDescription.split(" ")[1] for m in results.maps} == {"2"} and len(results.maps) == 8
    groups = hd.sr.Comprehensive3DSR.from_dataset(results.report).content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Nodule 2"]
