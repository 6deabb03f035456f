"""`lungnodule-explain analyze` and `demo`: arguments, every promised file, and bad input stopped at the edge.

The flow tests inject the worker tests' FakeAnalyzer; bad input must fail before any model is loaded, so those
run the real command line. The end-to-end tests on real LIDC scans need the lead's analysis module and bundle.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib import cli
from LungNoduleExplainLib.commands import demo
from LungNoduleExplainLib.phantom import make_phantom_ct
from LungNoduleExplainLib.region import box_in
from LungNoduleExplainLib.volume import lps_to_ras, read_ct

from fake_engine import FakeAnalyzer


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    """A small phantom CT saved as NRRD, with its nodule centre in RAS mm."""
    phantom = make_phantom_ct(seed=5, size=(96, 96, 48), diameter_mm=8.0, n_vessels=6)
    path = tmp_path_factory.mktemp("ct") / "phantom.nrrd"
    sitk.WriteImage(phantom.ct, str(path))
    return path, tuple(float(v) for v in lps_to_ras(phantom.nodule_center_lps)), phantom.ct


def run_with_fake(argv: list[str]) -> int:
    """Parse like the real command line (quietly) and run the verb with the FakeAnalyzer."""
    args = cli.build_parser().parse_args(["--quiet", *argv])
    return args.func(args, analyzer_factory=FakeAnalyzer)


def point_arg(point) -> str:
    return ",".join(f"{v:.3f}" for v in point)


def test_analyze_writes_every_promised_file_for_each_point(phantom_file, tmp_path, capsys):
    path, ras, ct = phantom_file
    points = tmp_path / "points.csv"
    index = ct.TransformPhysicalPointToIndex([-ras[0], -ras[1], ras[2]])
    points.write_text(f"X,Y,Z,space,note\n{ras[0]},{ras[1]},{ras[2]},,first\n\n"
                      f"{index[0]},{index[1]},{index[2]},ijk,second\n")
    out = tmp_path / "out"
    assert run_with_fake(["analyze", str(path), "--point", point_arg(ras), "--points-csv", str(points),
                          "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out.absolute() / 'report.html'}" in printed
    assert "nodule-03:" in printed
    for n in (1, 2, 3):
        body = json.loads((out / f"nodule-{n:02d}" / "finding.json").read_text())
        for rel in [body["files"]["segmentation"], *body["files"]["maps"].values(),
                    *body["files"]["overlays"].values()]:
            assert (out / f"nodule-{n:02d}" / rel).is_file()
        assert body["point_ras_mm"] == pytest.approx(ras, abs=1.0)  # all three are the same nodule
    seg = sitk.ReadImage(str(out / "nodule-01" / "segmentation.nrrd"))
    box_in(seg, ct, "segmentation")  # on the CT grid, over the nodule's region
    assert "Research use only" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["--point", "1,2"], "--point must be three comma-separated numbers"),
    (["--point", "a,b,c"], "--point must be three comma-separated numbers"),
    (["--point", "1,2,nan"], "--point must be three comma-separated numbers"),
    (["--point", "1,2,3", "--ras", "--lps"], "not allowed with argument"),
    (["--points-csv", "/no/such/points.csv"], "points file not found"),
    (["--point", "1,2,3", "--device", "tpu"], "invalid choice"),
])
def test_malformed_arguments_are_refused_by_the_parser(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", "ct.nrrd", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_negative_coordinates_are_values_not_options():
    args = cli.build_parser().parse_args(["analyze", "ct.nrrd", "--point", "-56.4,-86.34,-1.2e2", "--point",
                                          "3,-4,5", "--lps", "--out", "o"])
    assert args.point == [(-56.4, -86.34, -120.0), (3.0, -4.0, 5.0)]
    assert args.space == "lps"


def _main_error(argv: list[str], capsys) -> str:
    """Run the real command line; expect exit code 2 and one `error: ...` line; return it."""
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _image(array: np.ndarray, spacing=(0.7, 0.7, 1.25)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[:image.GetDimension()])
    return image


def _ct_like(dtype=np.int16) -> np.ndarray:
    array = np.full((8, 32, 32), -1000, dtype=dtype)
    array[:, 8:24, 8:24] = 40
    return array


NAN_CT = _ct_like(np.float32)
NAN_CT[4, 16, 16] = np.nan
BAD_IMAGES = {
    "2d": (_image(_ct_like()[0]), "expected a 3D CT, got a 2D image"),
    "single-slice": (_image(_ct_like()[:1]), "at least 2 voxels per axis"),
    "uint8": (_image(np.clip(_ct_like() + 1000, 0, 255).astype(np.uint8)), "8-bit pixels"),
    "mr-like": (_image((_ct_like() + 1000).astype(np.int16)), "does not look like CT"),
    "absurd-spacing": (_image(_ct_like(), spacing=(0.7, 0.7, 50.0)), "missing or absurd"),
    "nan": (_image(NAN_CT), "NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_ct_is_one_clear_error_and_nothing_is_written(case, tmp_path, capsys):
    image, message = BAD_IMAGES[case]
    path = tmp_path / f"{case}.nrrd"
    sitk.WriteImage(image, str(path))
    line = _main_error(["analyze", str(path), "--ijk", "--point", "0,0,0", "--out", str(tmp_path / "out")], capsys)
    assert message in line and str(path) in line
    assert not (tmp_path / "out").exists()


def test_a_point_outside_the_image_names_the_point(phantom_file, tmp_path, capsys):
    path, ras, _ = phantom_file
    line = _main_error(["analyze", str(path), "--point", "500,0,0", "--out", str(tmp_path / "out")], capsys)
    assert "--point 1" in line and "outside the image" in line
    assert not (tmp_path / "out").exists()


def test_a_point_in_air_far_from_tissue_is_refused_before_the_model_loads(phantom_file, tmp_path, capsys):
    path, _, _ = phantom_file
    points = tmp_path / "points.csv"
    points.write_text("x,y,z,space\n0,0,24,ijk\n")
    line = _main_error(["analyze", str(path), "--points-csv", str(points), "--model", str(tmp_path / "no-bundle"),
                        "--out", str(tmp_path / "out")], capsys)
    assert "points.csv line 2" in line and "lies in air" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("a,b,c\n1,2,3\n", "missing column(s) x, y, z"),
    ("x,y,z\n1,2,three\n", "line 2: x, y, z must be numbers"),
    ("x,y,z,space\n1,2,3,voxel\n", "space 'voxel' is not one of"),
    ("x,y,z\n", "has a header but no points"),
])
def test_a_malformed_points_file_names_the_line(content, message, phantom_file, tmp_path, capsys):
    path, _, _ = phantom_file
    points = tmp_path / "points.csv"
    points.write_text(content)
    line = _main_error(["analyze", str(path), "--points-csv", str(points), "--out", str(tmp_path / "out")], capsys)
    assert message in line
    assert not (tmp_path / "out").exists()


def test_no_point_at_all_is_an_error(phantom_file, tmp_path, capsys):
    line = _main_error(["analyze", str(phantom_file[0]), "--out", str(tmp_path / "out")], capsys)
    assert "no point given" in line


def test_an_existing_output_folder_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    line = _main_error(["analyze", str(tmp_path / "missing.nrrd"), "--point", "1,2,3", "--out", str(out)], capsys)
    assert "not empty" in line and "--overwrite" in line
    assert (out / "mine.txt").read_text() == "keep"


def test_a_missing_ct_is_an_error(tmp_path, capsys):
    line = _main_error(["analyze", str(tmp_path / "none.nrrd"), "--point", "1,2,3", "--out", str(tmp_path / "o")],
                       capsys)
    assert "CT not found" in line


def _link_series(source: Path, target: Path, skip: int | None = None) -> None:
    target.mkdir(exist_ok=True)
    files = sorted(source.glob("*.dcm"))
    for n, file in enumerate(files):
        if n != skip:
            os.symlink(file, target / f"{source.parent.name}-{file.name}")


def test_a_mixed_dicom_folder_is_refused(ct_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    _link_series(ct_dir / "LIDC-IDRI-0001" / "dicom", mixed)
    _link_series(ct_dir / "LIDC-IDRI-0003" / "dicom", mixed)
    line = _main_error(["analyze", str(mixed), "--point", "1,2,3", "--out", str(tmp_path / "out")], capsys)
    assert "mixes 2 series" in line
    assert not (tmp_path / "out").exists()


def test_a_dicom_series_with_a_missing_slice_is_refused(ct_dir, tmp_path, capsys):
    gap = tmp_path / "gap"
    _link_series(ct_dir / "LIDC-IDRI-0001" / "dicom", gap, skip=8)
    line = _main_error(["analyze", str(gap), "--point", "1,2,3", "--out", str(tmp_path / "out")], capsys)
    assert "missing slices" in line


def test_a_dicom_folder_with_a_single_slice_is_refused(ct_dir, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    first = sorted((ct_dir / "LIDC-IDRI-0001" / "dicom").glob("*.dcm"))[0]
    os.symlink(first, one / first.name)
    line = _main_error(["analyze", str(one), "--point", "1,2,3", "--out", str(tmp_path / "out")], capsys)
    assert "single slice" in line


def test_a_truncated_file_in_a_dicom_series_is_refused(ct_dir, tmp_path, capsys):
    series = tmp_path / "truncated"
    _link_series(ct_dir / "LIDC-IDRI-0001" / "dicom", series)
    victim = sorted(series.iterdir())[7]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[:3000])  # header cut short, no pixels
    line = _main_error(["analyze", str(series), "--point", "1,2,3", "--out", str(tmp_path / "out")], capsys)
    assert str(series) in line
    assert not (tmp_path / "out").exists()


def test_a_folder_of_corrupt_dicom_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for n in range(3):
        (folder / f"{n}.dcm").write_bytes(b"DICM" + bytes(range(256)) * 4)
    line = _main_error(["analyze", str(folder), "--point", "1,2,3", "--out", str(tmp_path / "out")], capsys)
    assert "no DICOM series found" in line


def test_demo_analyses_the_real_sample_ct_and_cites_it(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_with_fake(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LIDC-IDRI-0001" in printed and "against the LIDC readers' mask" in printed
    assert f"report: {out.absolute() / 'report.html'}" in printed
    index = json.loads((out / "findings.json").read_text())
    assert index["is_phantom"] is False and "CC BY 3.0" in index["source"] and "Armato" in index["source"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "LIDC-IDRI" in html and "not a patient" not in html
    assert demo.is_previous_demo(out)
    assert run_with_fake(["demo", "--out", str(out)]) == 0  # its own previous output is replaced without asking


def test_demo_writes_the_phantom_and_says_it_is_not_a_patient(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_with_fake(["demo", "--phantom", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "phantom, not a patient" in printed and f"report: {out.absolute() / 'report.html'}" in printed
    assert sitk.ReadImage(str(out / "phantom_ct.nrrd")).GetSize() == (192, 192, 96)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "synthetic phantom" in html and "not a patient" in html
    # Running it again replaces its own output; another folder's content is never replaced.
    assert demo.is_previous_demo(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert not demo.is_previous_demo(other)
    assert cli.main(["demo", "--out", str(other)]) == 2
    assert (other / "notes.txt").read_text() == "mine"


def test_demo_phantom_options_without_phantom_are_one_clear_error(tmp_path, capsys):
    line = _main_error(["demo", "--seed", "3", "--out", str(tmp_path / "out")], capsys)
    assert "--phantom" in line
    assert not (tmp_path / "out").exists()


# --- End to end with the real model (needs the lead's analysis module and the shipped bundle) -----------------

@pytest.fixture(scope="module")
def real_analyzer():
    """The real Analyzer with the default bundle, loaded once and shared by the end-to-end tests."""
    from LungNoduleExplainLib import analysis
    from LungNoduleExplainLib.errors import BundleError
    try:
        return analysis.Analyzer(bundle=None, device="cpu")
    except BundleError as exc:
        pytest.skip(f"the default bundle cannot be loaded: {exc}")


def _nodules(ct_dir: Path) -> dict[str, dict]:
    return {n["patient_id"]: n for n in json.loads((ct_dir / "nodules.json").read_text())}


PARTIAL_SERIES = pytest.mark.xfail(strict=True, reason=(
    "a known failure of the shipped nnU-Net: on LIDC-IDRI-0002 only 7 of the nodule's 28 slices are in the series "
    "and the centroid is at -560 HU (a subtle, part-solid nodule); the mask (about 11 mm) takes a bright neighbouring "
    "structure instead of the nodule's body, so the classifier sees a calcified structure. Strict: a pass would mean "
    "the behaviour changed and this mark must go. Geometry is right: the mask's centroid is within 10 mm of the "
    "click (asserted above)"))


@pytest.fixture(scope="module")
def lidc_report(ct_dir, real_analyzer, tmp_path_factory):
    """patient -> the report folder that `analyze` wrote at its nodule centroid (each run once per module)."""
    outputs: dict[str, Path] = {}

    def run(patient: str) -> Path:
        if patient not in outputs:
            out = tmp_path_factory.mktemp(patient) / "out"
            # 0002's nodule is missed by nnU-Net (PARTIAL_SERIES) and so refused by the nodule check: classified
            # anyway here, so that the other checks still run on it (the refusal: test_nodule_check)
            anyway = ["--classify-anyway"] if patient == "LIDC-IDRI-0002" else []
            args = cli.build_parser().parse_args(
                ["--quiet", "analyze", str(ct_dir / patient / "dicom"), "--point",
                 point_arg(_nodules(ct_dir)[patient]["centroid_ras_mm"]), "--out", str(out), *anyway])
            assert args.func(args, analyzer_factory=lambda **kwargs: real_analyzer) == 0
            outputs[patient] = out
        return outputs[patient]
    return run


@pytest.mark.parametrize("patient", ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"])
def test_analyze_on_a_real_lidc_series_at_the_nodule_centroid(patient, ct_dir, lidc_report):
    nodule = _nodules(ct_dir)[patient]
    out = lidc_report(patient)
    assert (out / "report.html").is_file()
    seg = sitk.ReadImage(str(out / "nodule-01" / "segmentation.nrrd"))
    box_in(seg, read_ct(ct_dir / patient / "dicom"), "segmentation")
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    for name, rel in body["files"]["maps"].items():
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "nodule-01" / rel)))
        assert 0.0 <= values.min() and values.max() <= 1.0, name
        assert (out / "nodule-01" / body["files"]["overlays"][name]).is_file()
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(seg))
    assert len(i) > 0, "a nodule was segmented"
    centroid = seg.TransformContinuousIndexToPhysicalPoint([float(i.mean()), float(j.mean()), float(k.mean())])
    assert np.linalg.norm(np.subtract(centroid, nodule["centroid_lps_mm"])) < 10.0, "the mask lies at the click"
    volume = len(i) * float(np.prod(seg.GetSpacing()))
    assert body["volume_mm3"] == pytest.approx(volume, rel=1e-3, abs=0.1), "volume is the mask's"
    assert body["diameter_mm"] == pytest.approx((6 * volume / np.pi) ** (1 / 3), abs=0.02), "equivalent sphere"
    assert set(body["timings_s"]) and body["model"]["name"]


ALL_THREE = ["LIDC-IDRI-0001", pytest.param("LIDC-IDRI-0002", marks=PARTIAL_SERIES), "LIDC-IDRI-0003"]


@pytest.mark.parametrize("patient", ALL_THREE)
def test_the_shipped_model_calls_each_real_nodule_suspicious(patient, lidc_report):
    body = json.loads((lidc_report(patient) / "nodule-01" / "finding.json").read_text())
    assert any(o["positive"] for o in body["outputs"] if o["kind"] == "diagnosis"), \
        "all three are rated suspicious (malignancy mean 4.25-4.75)"


@pytest.mark.parametrize("patient", ALL_THREE)
def test_the_segmentation_covers_the_clicked_centroid(patient, ct_dir, lidc_report):
    nodule = _nodules(ct_dir)[patient]
    seg = sitk.ReadImage(str(lidc_report(patient) / "nodule-01" / "segmentation.nrrd"))
    index = seg.TransformPhysicalPointToIndex(nodule["centroid_lps_mm"])
    assert sitk.GetArrayViewFromImage(seg)[index[2], index[1], index[0]] == 1


@pytest.mark.parametrize("patient", ALL_THREE)
def test_the_segmented_diameter_approaches_the_readers_diameter(patient, ct_dir, lidc_report):
    nodule = _nodules(ct_dir)[patient]
    body = json.loads((lidc_report(patient) / "nodule-01" / "finding.json").read_text())
    assert body["diameter_mm"] > 0.6 * nodule["diam_mm_mean"]


def test_demo_segments_the_real_sample_nodule_as_well_as_real_nodules_are(real_analyzer, tmp_path, capsys):
    """The first run a new user sees: the shipped model on the shipped real CT, no warning, the readers' nodule."""
    out = tmp_path / "demo"
    args = cli.build_parser().parse_args(["--quiet", "demo", "--out", str(out), "--device", "cpu"])
    assert args.func(args, analyzer_factory=lambda **kwargs: real_analyzer) == 0
    printed = capsys.readouterr().out
    dice = float(re.search(r"Dice (\d\.\d\d) against the LIDC readers' mask", printed).group(1))
    assert dice >= demo.TRUTH_DICE_WARNING  # out-of-fold mean on LIDC 0.83
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    assert body["warnings"] == [] and body["nodule_check"]["found"]
    assert 20.0 < body["long_axis_mm"] < 45.0  # the readers: 33 mm


def test_an_unreadable_bundle_is_one_clear_error(phantom_file, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{not json")
    path, ras, _ = phantom_file
    line = _main_error(["analyze", str(path), "--point", point_arg(ras), "--model", str(bundle), "--out",
                        str(tmp_path / "out")], capsys)
    assert str(bundle) in line or "bundle" in line
    assert not (tmp_path / "out").exists()


def threshold_segmenter():
    """nnU-Net's crop, paste-back and component choice (NoduleSegmenter.segment), with the network replaced
    by a -400 HU threshold within 15 mm of the crop's centre (focal, as a nodule model's output is: a bare threshold
    joins the nodule to the chest wall, which the nodule check rightly refuses): the real pipeline around a
    stand-in model, for tests that must not wait for training."""
    from LungNoduleExplainLib.segmentation import predict

    class ThresholdSegmenter(predict.NoduleSegmenter):
        def __init__(self) -> None:  # no model folder: only the attributes segment() reads
            self.crop_mm = predict.DEFAULT_CROP_MM
            self.threshold = predict.DEFAULT_THRESHOLD
            self.recentre = False

        def predict_array(self, hu_zyx: np.ndarray, spacing_zyx, locate: bool = False) -> np.ndarray:
            grid = np.indices(hu_zyx.shape, dtype=np.float32)
            centre = (np.asarray(hu_zyx.shape, dtype=np.float32) - 1) / 2
            step = np.asarray(spacing_zyx, dtype=np.float32)[:, None, None, None]
            near = np.sqrt((((grid - centre[:, None, None, None]) * step) ** 2).sum(axis=0)) <= 15.0
            return ((hu_zyx > -400) & near).astype(np.float32)

    return ThresholdSegmenter()


def test_the_real_pipeline_with_an_untrained_model_writes_a_valid_report_on_real_lidc(ct_dir, tmp_path, capsys):
    """Real Analyzer, bundle format and reports on a real DICOM series; only the weights are untrained."""
    from LungNoduleExplainLib import analysis
    from LungNoduleExplainLib.tasks import load_task_set
    from conftest import untrained_bundle

    task_set = load_task_set("lidc")
    bundle = untrained_bundle(tmp_path / "bundle", prior="nnunet")

    def factory(bundle, device, progress):
        return analysis.Analyzer(bundle, device="cpu", progress=progress, segmenter=threshold_segmenter())

    nodule = _nodules(ct_dir)["LIDC-IDRI-0003"]
    out = tmp_path / "out"
    args = cli.build_parser().parse_args(["--quiet", "analyze", str(ct_dir / "LIDC-IDRI-0003" / "dicom"), "--lps",
                                          "--point", point_arg(nodule["centroid_lps_mm"]), "--model", str(bundle),
                                          "--out", str(out)])
    assert args.func(args, analyzer_factory=factory) == 0
    ct = read_ct(ct_dir / "LIDC-IDRI-0003" / "dicom")
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    assert [o["name"] for o in body["outputs"]] == task_set.names
    for name in task_set.names:
        image = sitk.ReadImage(str(out / "nodule-01" / body["files"]["maps"][name]))
        box_in(image, ct, name)
        values = sitk.GetArrayViewFromImage(image)
        assert values.min() >= 0.0 and values.max() <= 1.0
    seg = sitk.ReadImage(str(out / "nodule-01" / "segmentation.nrrd"))
    index = seg.TransformPhysicalPointToIndex(nodule["centroid_lps_mm"])
    assert sitk.GetArrayViewFromImage(seg)[index[2], index[1], index[0]] == 1
    assert body["model"]["name"] == "untrained-test" and "segment" in body["timings_s"]
    assert (out / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == len(task_set.names)
    # the title names the patient, date and series of the DICOM header, not the folder "dicom"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<h1>Lung nodule analysis: LIDC-IDRI-0003 · CT " in html and "analysis: dicom" not in html
    assert body["study"]["patient_id"] == "LIDC-IDRI-0003" and body["study"]["modality"] == "CT"
    assert 0.0 < body["short_axis_mm"] <= body["long_axis_mm"]


# --- Review fixes ------------------------------------------------------------------------------------------------

def test_a_bundle_without_a_threshold_for_an_output_is_refused(tmp_path):
    """A missing threshold must not be reported as an invented 0.5."""
    from LungNoduleExplainLib import analysis
    from LungNoduleExplainLib.bundle import save_bundle
    from LungNoduleExplainLib.errors import BundleError
    from LungNoduleExplainLib.networks import NetworkConfig, build_network
    from LungNoduleExplainLib.tasks import load_task_set

    task_set = load_task_set("lidc")
    network = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))
    thresholds = {n: 0.5 for n in task_set.names if n != "spiculated"}
    bundle = save_bundle(tmp_path / "bundle", build_network(network, len(task_set.manifestations)), task_set,
                         network, thresholds, name="no-threshold", prior="nnunet", training={}, metrics={})
    with pytest.raises(BundleError, match=r"thresholds.*spiculated"):
        analysis.Analyzer(bundle, device="cpu", segmenter=threshold_segmenter())


@pytest.mark.parametrize("diameter", ["50", "nan", "1"])
def test_demo_refuses_an_unsupported_diameter_with_one_clear_error(diameter, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--phantom", "--out", str(tmp_path / "out"), "--diameter", diameter])
    assert exit_info.value.code == 2
    assert "--diameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_points_file_that_is_not_utf8_is_one_clear_error(phantom_file, tmp_path, capsys):
    path, _, _ = phantom_file
    points = tmp_path / "points.csv"
    points.write_bytes("x,y,z,note\n1,2,3,café\n".encode("latin-1"))
    line = _main_error(["analyze", str(path), "--points-csv", str(points), "--out", str(tmp_path / "out")], capsys)
    assert str(points) in line and "UTF-8" in line
    assert not (tmp_path / "out").exists()


def test_overwrite_never_deletes_the_input_ct(phantom_file, tmp_path):
    from LungNoduleExplainLib.reports import OutputExistsError
    _, ras, ct = phantom_file
    folder = tmp_path / "scans"
    folder.mkdir()
    path = folder / "ct.nrrd"
    sitk.WriteImage(ct, str(path))
    from LungNoduleExplainLib.output_folder import mark
    mark(tmp_path, "analyze")  # even a folder of ours is not replaced when the CT is inside it
    with pytest.raises(OutputExistsError, match="holds the CT"):
        run_with_fake(["analyze", str(path), "--point", point_arg(ras), "--out", str(tmp_path), "--overwrite"])
    assert path.is_file()


def test_the_printed_summary_carries_the_research_notice_and_every_threshold(phantom_file, tmp_path, capsys):
    path, ras, _ = phantom_file
    assert run_with_fake(["analyze", str(path), "--point", point_arg(ras), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Research use only" in printed
    finding = FakeAnalyzer().analyze(read_ct(path), ras)
    # the axial long x short axis (as Lung-RADS measures) beside the equivalent diameter
    assert f"axial {finding.axial.long_mm:.1f} x {finding.axial.short_mm:.1f} mm (long x short axis)" in printed
    paragraph = demo.summary_paragraph(finding, demo.phantom_case(0, 8.0))
    for output in finding.outputs:
        assert f"{output.name} {output.probability:.2f} (" in paragraph  # verdict and threshold follow
        assert f"threshold {output.threshold:.2f}" in paragraph


@pytest.mark.parametrize("field, value", [("network_class_name", "collections.OrderedDict"),
                                          ("conv_op", "collections.OrderedDict")])
def test_a_segmentation_plan_naming_code_outside_the_architectures_is_refused(field, value, tmp_path):
    """nnU-Net imports whatever plans.json names (pydoc.locate): only its architectures and torch.nn layers."""
    from LungNoduleExplainLib.bundle import default_bundle_path
    from LungNoduleExplainLib.errors import BundleError
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter

    import shutil
    model = shutil.copytree(default_bundle_path() / "segmentation", tmp_path / "segmentation")
    plans = json.loads((model / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    if field == "network_class_name":
        architecture[field] = value
    else:
        architecture["arch_kwargs"][field] = value
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(BundleError, match=f"plans.json.*{field}.*{value}"):
        NoduleSegmenter(model, device="cpu")


def test_the_demo_checks_its_segmentation_against_the_phantoms_known_nodule():
    """The phantom's truth is known: a mask that misses much of it is said in the report and the summary."""
    phantom = make_phantom_ct(seed=5, size=(96, 96, 48), diameter_mm=8.0, n_vessels=6)
    good = FakeAnalyzer().analyze(phantom.ct, phantom.nodule_center_lps, space="lps")
    good.segmentation = sitk.Cast(phantom.nodule_mask > 0, sitk.sitkUInt8)
    case = demo.DemoCase(phantom.ct, demo.ClickedPoint(phantom.nodule_center_lps, "lps", "centre"), phantom.nodule_mask,
                         "the phantom's true nodule", "t", "s", "made.", True)
    assert demo.check_against_truth(good, case) == pytest.approx(1.0)
    assert not good.warnings
    half = FakeAnalyzer().analyze(phantom.ct, phantom.nodule_center_lps, space="lps")
    array = sitk.GetArrayFromImage(phantom.nodule_mask).astype(np.uint8)
    x0 = int(np.nonzero(array)[2].mean())
    array[:, :, x0:] = 0  # the mask of one side only, as the shipped nnU-Net gives on some phantoms
    half.segmentation = sitk.GetImageFromArray(array)
    half.segmentation.CopyInformation(phantom.ct)
    dice = demo.check_against_truth(half, case)
    assert 0.3 < dice < demo.TRUTH_DICE_WARNING
    assert len(half.warnings) == 1 and f"Dice {dice:.2f}" in half.warnings[0]
    text = demo.summary_paragraph(half, case, dice)
    assert f"Dice {dice:.2f} against the phantom's true nodule" in text and "missed much of the phantom's" in text
    assert "missed" not in demo.summary_paragraph(good, case, 1.0)
