"""A round trip through a real PACS: a real LIDC series uploaded to Orthanc (DICOMweb plugin), analysed from the
server with `analyze --dicomweb ... --store`, the results fetched back and compared with the analysis of the same
files on disk; and the errors: a study not on the server, a server that is down, refused credentials, a refused
upload."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

pytest.importorskip("dicomweb_client", reason="the dicom extra is not installed: pip install -e '.[dicom]'")

from LungNoduleExplainLib.dicom import web  # noqa: E402
from LungNoduleExplainLib.dicom.report import read_report  # noqa: E402
from LungNoduleExplainLib.dicom.series import find_series  # noqa: E402

from dicom_helpers import centroid_lps, run_analyze, untrained_bundle  # noqa: E402
from orthanc_server import PASSWORD, USER, free_port, run_orthanc  # noqa: E402

PATIENT = "LIDC-IDRI-0003"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, ct_dir):
    """Orthanc holding the real series of PATIENT (uploaded through its REST API)."""
    for server in run_orthanc(tmp_path_factory.mktemp("orthanc")):
        server.upload(sorted((ct_dir / PATIENT / "dicom").glob("*.dcm")))
        yield server


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    monkeypatch.setenv(web.USER_VARIABLE, USER)
    monkeypatch.setenv(web.PASSWORD_VARIABLE, PASSWORD)
    monkeypatch.delenv(web.TOKEN_VARIABLE, raising=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def series(ct_dir):
    return find_series(ct_dir / PATIENT / "dicom")


@pytest.fixture(scope="module")
def round_trip(orthanc, bundle, series, ct_dir, tmp_path_factory):
    """(OUT analysed from the PACS with --store, OUT of the same files on disk, the log records of the PACS run)."""
    folder = tmp_path_factory.mktemp("round-trip")
    point = centroid_lps(ct_dir, PATIENT)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    root = logging.getLogger()
    level, root.level = root.level, logging.DEBUG
    root.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv(web.USER_VARIABLE, USER)
            env.setenv(web.PASSWORD_VARIABLE, PASSWORD)
            assert run_analyze(["--dicomweb", orthanc.dicomweb, "--study-uid", series.headers[0].StudyInstanceUID,
                                "--series-uid", series.uid, "--lps", "--point", point, "--out",
                                str(folder / "pacs"), "--store"], bundle) == 0
    finally:
        root.removeHandler(handler)
        root.level = level
    assert run_analyze([str(ct_dir / PATIENT / "dicom"), "--lps", "--point", point, "--out", str(folder / "disk"),
                        "--dicom"], bundle) == 0
    return folder / "pacs", folder / "disk", records


def test_the_analysis_from_the_pacs_equals_the_analysis_of_the_files_on_disk(round_trip):
    pacs, disk, _ = round_trip
    from_pacs, from_disk = (json.loads((out / "nodule-01" / "finding.json").read_text()) for out in (pacs, disk))
    for key in ("long_axis_mm", "short_axis_mm", "volume_mm3", "diameter_mm", "point_lps_mm"):
        assert from_pacs[key] == from_disk[key], key
    assert {**from_pacs["study"], "name": ""} == {**from_disk["study"], "name": ""}, "the same patient and study"
    assert [(o["name"], o["probability"], o["positive"]) for o in from_pacs["outputs"]] == \
        [(o["name"], o["probability"], o["positive"]) for o in from_disk["outputs"]]
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / "nodule-01" / "segmentation.nrrd"))) for out in round_trip[:2]]
    assert np.array_equal(*masks) and masks[0].any()


def test_the_stored_results_come_back_from_the_pacs_with_the_numbers_of_the_disk_run(round_trip, orthanc, series):
    pacs, disk, _ = round_trip
    client = web.connect(orthanc.dicomweb)
    study = series.headers[0].StudyInstanceUID
    found = {item["0020000E"]["Value"][0]: item["00080060"]["Value"][0]
             for item in client.search_for_series(study, fields=["Modality"])}
    written = [pydicom.dcmread(p) for p in sorted((pacs / "dicom").glob("*.dcm"))]
    for dataset in written:
        assert found.get(dataset.SeriesInstanceUID) == dataset.Modality, "every object stored in the study"
    sr = next(d for d in written if d.Modality == "SR")
    fetched = client.retrieve_instance(study, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    from_pacs, from_disk = read_report(fetched), read_report(pydicom.dcmread(disk / "dicom" / "SR-1.dcm"))
    assert [n["values"] for n in from_pacs] == [n["values"] for n in from_disk]
    assert [n["calls"] for n in from_pacs] == [n["calls"] for n in from_disk]


def test_the_report_is_stored_after_every_object_it_references(round_trip, orthanc):
    import requests

    changes = requests.get(f"{orthanc.url}/changes", params={"limit": 1000}, auth=(USER, PASSWORD), timeout=30).json()
    new = [c["ID"] for c in changes["Changes"] if c["ChangeType"] == "NewInstance"]
    modalities = {i["ID"]: requests.get(f"{orthanc.url}/instances/{i['ID']}/simplified-tags", auth=(USER, PASSWORD),
                                        timeout=30).json()["Modality"] for i in map(lambda n: {"ID": n}, new)}
    order = [modalities[i] for i in new]
    assert order[-1] == "SR" and order.count("SR") == 1 and "SEG" in order


def test_no_patient_identifier_is_logged(round_trip, series):
    _, _, records = round_trip
    text = "\n".join(record.getMessage() for record in records)
    assert records, "the run logged something"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs"):
        value = str(series.headers[0].get(keyword, "") or "")
        if value:
            assert value not in text, keyword


def test_a_study_not_on_the_server_is_one_clear_error_and_nothing_is_written(orthanc, bundle, tmp_path, capsys):
    from LungNoduleExplainLib import cli

    argv = ["analyze", "--dicomweb", orthanc.dicomweb, "--study-uid", "1.2.3.4", "--series-uid", "1.2.3.4.5",
            "--point", "1,2,3", "--out", str(tmp_path / "out"), "--model", str(bundle)]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "study 1.2.3.4 series 1.2.3.4.5" in error and ("HTTP 404" in error or "holds no instance" in error)
    assert not (tmp_path / "out").exists()


def test_a_server_that_is_down_is_one_clear_error(bundle, tmp_path, capsys):
    from LungNoduleExplainLib import cli

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert cli.main(["analyze", "--dicomweb", url, "--study-uid", "1.2", "--series-uid", "1.2.3", "--point", "1,2,3",
                     "--out", str(tmp_path / "out")]) == 2
    assert f"DICOMweb server {url} cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refused_credentials_and_credentials_on_the_command_line_are_clear_errors(orthanc, series, tmp_path, capsys,
                                                                                 monkeypatch):
    from LungNoduleExplainLib import cli

    monkeypatch.setenv(web.PASSWORD_VARIABLE, "wrong")
    argv = ["--study-uid", series.headers[0].StudyInstanceUID, "--series-uid", series.uid, "--point", "1,2,3",
            "--out", str(tmp_path / "out")]
    assert cli.main(["analyze", "--dicomweb", orthanc.dicomweb, *argv]) == 2
    error = capsys.readouterr().err
    assert "HTTP 401 (credentials missing or refused)" in error and "wrong" not in error
    with_password = orthanc.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")
    assert cli.main(["analyze", "--dicomweb", with_password, *argv]) == 2
    assert "holds a user name or password" in capsys.readouterr().err


class RefusingClient:
    """A DICOMweb client whose server refuses the `refuse`-th store request (1: the SEG and maps, 2: the SR),
    by a FailedSOPSequence or by dropping the connection."""

    base_url = "http://pacs.invalid/dicom-web"

    def __init__(self, refuse: int, drop: bool = False) -> None:
        self.refuse, self.drop, self.sent = refuse, drop, []

    def store_instances(self, datasets):  # noqa: ANN001
        import requests

        self.sent.append([str(d.SOPInstanceUID) for d in datasets])
        if len(self.sent) != self.refuse:
            return pydicom.Dataset()
        if self.drop:
            raise requests.ConnectionError("connection reset")
        failed = pydicom.Dataset()
        failed.ReferencedSOPInstanceUID = datasets[0].SOPInstanceUID
        response = pydicom.Dataset()
        response.FailedSOPSequence = [failed]
        return response


def test_a_refused_upload_never_stores_the_report_and_says_what_was_stored(round_trip):
    written = [pydicom.dcmread(p) for p in sorted((round_trip[1] / "dicom").glob("*.dcm"))]
    report = next(d for d in written if d.Modality == "SR")
    objects = [d for d in written if d.Modality != "SR"]
    client = RefusingClient(refuse=1)
    with pytest.raises(web.DicomWebError, match=f"refused 1 of {len(objects)} objects") as refused:
        web.store_results(client, objects, report)
    assert len(client.sent) == 1, "the SR is not sent after a refusal"
    assert len(refused.value.stored) == len(objects) - 1
    client = RefusingClient(refuse=2, drop=True)
    with pytest.raises(web.DicomWebError, match="cannot be reached when storing the report") as dropped:
        web.store_results(client, objects, report)
    assert dropped.value.stored == [str(d.SOPInstanceUID) for d in objects]
