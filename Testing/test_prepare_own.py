"""prepare: a hospital's own cases CSV + task configuration -> the lidc-voi format; bad rows reported and skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib.cli import main
from LungNoduleExplainLib.data.own_cases import prepare_own
from LungNoduleExplainLib.data.voi_table import read_voi_table
from LungNoduleExplainLib.errors import DatasetError
from LungNoduleExplainLib.tasks import TaskSet, load_task_set

COLUMNS = ["case_id", "patient_id", "ct", "mask", "point_x_mm", "point_y_mm", "point_z_mm", "point_space",
           "diameter_mm", "diagnosis", "lobulation", "spiculation", "relation_to_bronchus", "relation_to_vessel",
           "site"]


def _voi_rows(voi_dir: Path, n: int) -> list[dict]:
    with (voi_dir / "nodules.csv").open() as fh:
        return [row for _, row in zip(range(n), csv.DictReader(fh))]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{c: row.get(c, "") for c in COLUMNS} for row in rows])
    return path


@pytest.fixture
def cases_csv(voi_dir, tmp_path) -> tuple[Path, list[dict]]:
    """Five rows from the real lidc-voi images: a mask row, a RAS point row, and three bad rows."""
    v = _voi_rows(voi_dir, 5)
    labels = {"diagnosis": "MPL", "lobulation": "1", "spiculation": "0", "relation_to_bronchus": "",
              "relation_to_vessel": "1", "site": "A"}
    rows = [
        {"case_id": "c1", "patient_id": "p1", "ct": str(voi_dir / v[0]["image"]), "mask": str(voi_dir / v[0]["mask"]),
         **labels},
        {"case_id": "c2", "patient_id": "p2", "ct": str(voi_dir / v[1]["image"]), "point_space": "ras",
         "point_x_mm": -float(v[1]["center_x_mm"]), "point_y_mm": -float(v[1]["center_y_mm"]),
         "point_z_mm": v[1]["center_z_mm"], "diameter_mm": "12.5", **labels, "diagnosis": "SOL"},
        {"case_id": "c3", "patient_id": "p3", "ct": str(tmp_path / "no-such-ct.nii.gz"), "mask": "", **labels},
        {"case_id": "c4", "patient_id": "p4", "ct": str(voi_dir / v[3]["image"]), "mask": str(voi_dir / v[3]["mask"]),
         **labels, "spiculation": "2"},
        {"case_id": "c5", "patient_id": "p5", "ct": str(voi_dir / v[4]["image"]), "point_x_mm": v[4]["center_x_mm"],
         "point_y_mm": v[4]["center_y_mm"], "point_z_mm": v[4]["center_z_mm"], "diameter_mm": "9", **labels},
    ]
    return _write_csv(tmp_path / "cases.csv", rows), v


@pytest.fixture
def inhouse():
    return load_task_set("inhouse-example")


def test_good_rows_are_written_and_bad_rows_skipped_with_their_reason(cases_csv, inhouse, tmp_path):
    path, _ = cases_csv
    summary = prepare_own(path, inhouse, tmp_path / "out", export_nnunet=False)
    assert summary.cases_total == 2
    assert summary.skipped_by_reason() == {"missing file": 1, "label outside its rule": 1, "bad point": 1}
    messages = {s.what: s.message for s in summary.skipped}
    assert "'spiculation' = '2'" in messages["line 5 (case c4)"]
    assert "no-such-ct" in messages["line 4 (case c3)"]
    assert "point_space" in messages["line 6 (case c5)"]
    records = read_voi_table(tmp_path / "out", inhouse, require_masks=False)
    assert [r.case_id for r in records] == ["c1", "c2"]
    assert [r.labels(inhouse) for r in records] == [[1, 1, 0, None, 1], [0, 1, 0, None, 1]]
    assert records[0].row["site"] == "A"  # other columns pass through


def test_mask_row_keeps_the_mask_where_it_was_and_centres_on_it(cases_csv, inhouse, tmp_path, voi_dir):
    path, v = cases_csv
    prepare_own(path, inhouse, tmp_path / "out", context_mm=5, export_nnunet=False)
    record = read_voi_table(tmp_path / "out", require_masks=False)[0]
    source = sitk.ReadImage(str(voi_dir / v[0]["mask"]))
    written = sitk.ReadImage(str(record.mask_path))
    back = sitk.Resample(written, source, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.array_equal(sitk.GetArrayFromImage(back) > 0, sitk.GetArrayFromImage(source) > 0)
    nonzero = np.argwhere(sitk.GetArrayFromImage(source) > 0).mean(axis=0)[::-1]
    assert np.allclose(record.center_lps, source.TransformContinuousIndexToPhysicalPoint(nonzero.tolist()))
    assert record.diameter_mm > 3


def test_point_row_has_an_empty_mask_and_its_point_converted_from_ras(cases_csv, inhouse, tmp_path, voi_dir):
    path, v = cases_csv
    summary = prepare_own(path, inhouse, tmp_path / "out", context_mm=4, export_nnunet=False)
    record = read_voi_table(tmp_path / "out", require_masks=False)[1]
    assert record.mask_path is None and record.row["mask"] == ""
    assert np.allclose(record.center_lps, [float(v[1][f"center_{a}_mm"]) for a in "xyz"])
    assert record.diameter_mm == 12.5
    assert any("point but no mask" in note for note in summary.notes)
    assert "skipped" in summary.nnunet or summary.nnunet == ""
    # The crop (12.5 mm / 2 + 4 mm around the point) holds the same HU at the same LPS points as the source CT.
    crop, ct = sitk.ReadImage(str(record.image_path)), sitk.ReadImage(str(voi_dir / v[1]["image"]))
    assert all(n * s <= 2 * (6.25 + 4) + 4 * s + 1e-6 for n, s in zip(crop.GetSize(), crop.GetSpacing()))
    back = sitk.Resample(ct, crop, sitk.Transform(), sitk.sitkNearestNeighbor, -5000, ct.GetPixelID())
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(crop))


def test_rerun_skips_finished_cts_and_picks_up_a_fixed_row(cases_csv, inhouse, tmp_path):
    path, _ = cases_csv
    prepare_own(path, inhouse, tmp_path / "out", export_nnunet=False)
    again = prepare_own(path, inhouse, tmp_path / "out", export_nnunet=False)
    assert (again.units_resumed, again.cases_written, again.cases_total) == (2, 0, 2)
    text = path.read_text().replace(",2,,1,A", ",0,,1,A")  # fix c4's spiculation
    path.write_text(text)
    fixed = prepare_own(path, inhouse, tmp_path / "out", export_nnunet=False)
    assert (fixed.cases_written, fixed.cases_total) == (1, 3)


def test_a_label_column_missing_from_the_csv_stops_with_its_name(voi_dir, tmp_path, inhouse):
    path = tmp_path / "cases.csv"
    path.write_text("case_id,patient_id,ct,mask,diagnosis\nc1,p1,x.nii.gz,,MPL\n")
    with pytest.raises(DatasetError, match="lobulation"):
        prepare_own(path, inhouse, tmp_path / "out")


def test_relative_paths_are_resolved_against_the_csv_folder(voi_dir, tmp_path, inhouse):
    v = _voi_rows(voi_dir, 1)[0]
    (tmp_path / "voi").symlink_to(voi_dir)
    rows = [{"case_id": "r1", "patient_id": "p1", "ct": f"voi/{v['image']}", "mask": f"voi/{v['mask']}",
             "diagnosis": "SOL"}]
    summary = prepare_own(_write_csv(tmp_path / "cases.csv", rows), inhouse, tmp_path / "out", export_nnunet=False)
    assert summary.cases_total == 1 and not summary.skipped


def test_command_line_prepare_writes_the_table_and_the_task_configuration(cases_csv, tmp_path, capsys):
    path, _ = cases_csv
    out = tmp_path / "cli-out"
    assert main(["--quiet", "prepare", "--cases", str(path), "--tasks", "inhouse-example", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases_total"] == 2 and len(summary["skipped"]) == 3
    assert load_task_set(out / "tasks.json") == load_task_set("inhouse-example")
    assert (out / "summary.json").is_file()


def test_example_csv_and_task_configuration_are_valid(inhouse):
    examples = Path(__file__).resolve().parents[1] / "examples"
    with (examples / "own-cases-example.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = reader.fieldnames
    assert set(inhouse.columns) <= set(columns) and {"case_id", "patient_id", "ct"} <= set(columns)
    assert all(all(y is not None for y in inhouse.labels(row)[:1]) for row in rows)
    paper = load_task_set(examples / "tasks-lidc-paper.json")
    assert paper.diagnosis.column == "paper_malignant"


def test_a_dicom_folder_with_an_lps_point_is_cropped_around_that_point(ct_dir, tmp_path, inhouse):
    reference = json.loads((ct_dir / "nodules.json").read_text())[2]  # LIDC-IDRI-0003, about 31 mm
    x, y, z = reference["centroid_lps_mm"]
    rows = [{"case_id": "d1", "patient_id": "p1", "ct": str(ct_dir / "LIDC-IDRI-0003" / "dicom"),
             "point_x_mm": x, "point_y_mm": y, "point_z_mm": z, "point_space": "lps", "diameter_mm": "31",
             "diagnosis": "MPL"}]
    summary = prepare_own(_write_csv(tmp_path / "cases.csv", rows), inhouse, tmp_path / "out", export_nnunet=False)
    assert summary.cases_total == 1 and not summary.skipped
    record = read_voi_table(tmp_path / "out", require_masks=False)[0]
    crop = sitk.ReadImage(str(record.image_path))
    middle = np.asarray(crop.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in crop.GetSize()]))
    assert np.allclose(middle[:2], [x, y], atol=crop.GetSpacing()[0])  # in-plane centred (z is clipped to 11 slices)
    assert np.allclose(record.center_lps, [x, y, z])


def test_command_line_exits_1_when_no_row_could_be_prepared(tmp_path, capsys):
    path = _write_csv(tmp_path / "cases.csv", [{"case_id": "x1", "patient_id": "p", "ct": "missing.nii.gz",
                                                 "mask": "m.nii.gz", "diagnosis": "MPL"}])
    assert main(["--quiet", "prepare", "--cases", str(path), "--tasks", "inhouse-example",
                 "--out", str(tmp_path / "out")]) == 1
    assert "missing file: 1" in capsys.readouterr().out


# ------------------------------------------------------------------------- small synthetic CTs (fast, no real data)
SMALL_HEADER = "case_id,patient_id,ct,mask,diagnosis,lobulation,spiculation,relation_to_bronchus,relation_to_vessel\n"


@pytest.fixture
def small_cts(tmp_path) -> Path:
    """Two small CTs, a.nii.gz and b.nii.gz (other origins, the 'nodule' elsewhere), with masks m_a / m_b."""
    for name, origin, at in (("a", (0.0, 0.0, 0.0), 8), ("b", (5.0, -3.0, 7.5), 12)):
        array = np.full((20, 32, 32), -1000, np.int16)
        array[at:at + 4, at:at + 4, at:at + 4] = 40
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 2.0))
        image.SetOrigin(origin)
        mask = sitk.GetImageFromArray((array > 0).astype(np.uint8))
        mask.CopyInformation(image)
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(mask, str(tmp_path / f"m_{name}.nii.gz"))
    return tmp_path


def _small(folder: Path, lines: str) -> Path:
    path = folder / "cases.csv"
    path.write_text(SMALL_HEADER + lines)
    return path


def _table(out: Path) -> dict[str, dict]:
    with (out / "nodules.csv").open() as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


def test_a_row_with_more_cells_than_the_header_is_skipped_naming_its_line(small_cts, inhouse):
    # an unquoted comma in a free-text cell shifts every cell after it
    # (the blank line 3 is no row, but it is a line: the bad row is line 4 of the file)
    path = _small(small_cts, "c2,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n\nc1,p1,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1,oops\n")
    summary = prepare_own(path, inhouse, small_cts / "out", context_mm=2, export_nnunet=False)
    assert summary.cases_total == 1 and summary.skipped_by_reason() == {"wrong number of cells": 1}
    assert "line 4" in summary.skipped[0].what and "10 cells" in summary.skipped[0].message


def test_case_ids_differing_only_in_letter_case_are_duplicates(small_cts, inhouse):
    # images/c1.nii.gz and images/C1.nii.gz are one file on Windows and macOS: one case would overwrite the other
    path = _small(small_cts, "c1,p1,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1\nC1,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n")
    summary = prepare_own(path, inhouse, small_cts / "out", context_mm=2, export_nnunet=False)
    assert summary.cases_total == 1 and summary.skipped_by_reason() == {"duplicate case_id": 1}
    assert "'c1'" in summary.skipped[0].message


def test_rows_of_one_ct_naming_two_patients_are_skipped(small_cts, inhouse):
    # one CT is one patient: two patient ids would let a patient's nodules fall on both sides of a split
    path = _small(small_cts, "c1,p1,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1\nc2,p2,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1\n"
                             "c3,p3,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n")
    summary = prepare_own(path, inhouse, small_cts / "out", context_mm=2, export_nnunet=False)
    assert summary.cases_total == 1 and summary.skipped_by_reason() == {"patient_id differs within one CT": 2}
    assert "'p1'" in summary.skipped[0].message and "'p2'" in summary.skipped[0].message


def test_an_unreadable_mask_is_skipped_naming_the_file_and_the_run_goes_on(small_cts, inhouse):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 5), np.uint8)), str(small_cts / "flat.nii.gz"))
    path = _small(small_cts, "c1,p1,a.nii.gz,flat.nii.gz,MPL,1,0,1,1\nc2,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n")
    summary = prepare_own(path, inhouse, small_cts / "out", context_mm=2, export_nnunet=False)
    assert summary.cases_total == 1 and summary.skipped_by_reason() == {"unreadable mask": 1}
    assert "flat.nii.gz" in summary.skipped[0].message


def test_a_bad_readers_cell_is_skipped_at_prepare_naming_line_and_column(small_cts):
    tasks = TaskSet.from_dict({"diagnosis": {"name": "malignant", "column": "malignancy", "positive": [4, 5],
                                             "negative": [1, 2], "readers_column": "malignancy_reader_ratings"}})
    path = small_cts / "cases.csv"
    path.write_text("case_id,patient_id,ct,mask,malignancy,malignancy_reader_ratings\n"
                    "c1,p1,a.nii.gz,m_a.nii.gz,4,4/5\nc2,p2,b.nii.gz,m_b.nii.gz,2,2;1;3\n")
    summary = prepare_own(path, tasks, small_cts / "out", context_mm=2, export_nnunet=False)
    assert summary.cases_total == 1 and summary.skipped_by_reason() == {"bad reader ratings": 1}
    assert "line 2" in summary.skipped[0].what and "malignancy_reader_ratings" in summary.skipped[0].message


def test_a_rerun_after_the_csv_was_edited_writes_what_the_csv_now_says(small_cts, inhouse):
    out = small_cts / "out"
    prepare_own(_small(small_cts, "c1,p1,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1\nc2,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n"
                                  "c3,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n"), inhouse, out, context_mm=2,
                export_nnunet=False)
    # c1's diagnosis corrected, c2 moved to the CT it really belongs to, c3 removed
    path = _small(small_cts, "c1,p1,a.nii.gz,m_a.nii.gz,SOL,1,0,1,1\nc2,p1,a.nii.gz,m_a.nii.gz,SOL,0,0,0,0\n")
    summary = prepare_own(path, inhouse, out, context_mm=2, export_nnunet=False)
    table = _table(out)
    assert sorted(table) == ["c1", "c2"] and summary.cases_total == 2
    assert table["c1"]["diagnosis"] == "SOL" and table["c2"]["source_ct"] == str(small_cts / "a.nii.gz")
    assert any("c3" in note for note in summary.notes)
    # c2's image is a crop of CT a (its row says so), not of b
    image = sitk.ReadImage(str(out / table["c2"]["image"]))
    assert image.GetOrigin() == sitk.ReadImage(str(out / table["c1"]["image"])).GetOrigin()
    assert json.loads((out / "progress.json").read_text())["units"].keys() == {str(small_cts / "a.nii.gz")}


def test_an_interrupted_prepare_leaves_no_table_that_looks_complete(small_cts, inhouse):
    out = small_cts / "out"
    path = _small(small_cts, "c1,p1,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1\nc2,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n")

    def interrupt(fraction, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the first CT
        prepare_own(path, inhouse, out, context_mm=2, export_nnunet=False, progress=interrupt)
    assert (out / "progress.json").is_file() and not (out / "nodules.csv").exists()
    summary = prepare_own(path, inhouse, out, context_mm=2, export_nnunet=False)
    assert (summary.units_resumed, summary.cases_total) == (1, 2) and sorted(_table(out)) == ["c1", "c2"]
    # an interrupted rerun that changes cases takes the old table away too: its images are being rewritten
    path.write_text(path.read_text().replace("MPL", "SOL"))
    with pytest.raises(KeyboardInterrupt):
        prepare_own(path, inhouse, out, context_mm=2, export_nnunet=False, progress=interrupt)
    assert not (out / "nodules.csv").exists() and not (out / "summary.json").exists()
    prepare_own(path, inhouse, out, context_mm=2, export_nnunet=False)
    assert _table(out)["c1"]["diagnosis"] == "SOL"


def test_resuming_with_another_context_is_refused_instead_of_mixing_crops(small_cts, inhouse):
    path = _small(small_cts, "c1,p1,a.nii.gz,m_a.nii.gz,MPL,1,0,1,1\n")
    prepare_own(path, inhouse, small_cts / "out", context_mm=2, export_nnunet=False)
    path.write_text(path.read_text() + "c2,p2,b.nii.gz,m_b.nii.gz,SOL,0,0,0,0\n")
    with pytest.raises(DatasetError, match="context_mm"):  # c1 cut with 2 mm, c2 with 10 mm, said nowhere
        prepare_own(path, inhouse, small_cts / "out", context_mm=10, export_nnunet=False)
    assert prepare_own(path, inhouse, small_cts / "out", context_mm=2, export_nnunet=False).cases_total == 2
