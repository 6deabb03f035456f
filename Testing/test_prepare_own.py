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
from LungNoduleExplainLib.tasks import load_task_set

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
