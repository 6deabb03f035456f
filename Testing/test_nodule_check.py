"""Is there a nodule at the click? The decision on synthetic masks, its path through analyze, the report, the worker
and finding.json, and the real LIDC CTs: off-nodule clicks refused, the real nodules accepted."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib import cli
from LungNoduleExplainLib.errors import NoNoduleError
from LungNoduleExplainLib.nodule_check import (MAX_NODULE_DIAMETER_MM, check_nodule, longest_diameter_mm,
                                               segment_and_check)
from LungNoduleExplainLib.volume import lps_to_ras, read_ct

from fake_engine import FakeAnalyzer, untrained_bundle

REPO = Path(__file__).resolve().parents[1]
OFF_NODULE_CSV = REPO / "benchmarks" / "nodule_gate" / "off_nodule_points.csv"
SPACING = (0.7, 0.7, 1.25)  # x, y, z mm
SHAPE = (48, 80, 80)  # z, y, x


def image_of(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def ball(centre_zyx, radius_mm: float, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """uint8 [z, y, x]: voxels within radius_mm of the centre (voxel index z, y, x)."""
    grid = np.indices(shape).astype(float)
    step = np.asarray(spacing[::-1])[:, None, None, None]
    distance = np.sqrt((((grid - np.asarray(centre_zyx, float)[:, None, None, None]) * step) ** 2).sum(axis=0))
    return (distance <= radius_mm).astype(np.uint8)


def decide(mask: np.ndarray, click_zyx, field_box=None):
    ct = image_of(np.where(mask > 0, 40.0, -850.0).astype(np.float32))
    probability = image_of(mask.astype(np.float32))
    point = ct.TransformContinuousIndexToPhysicalPoint([float(v) for v in click_zyx[::-1]])
    return check_nodule(ct, image_of(mask), probability, point, field_box)


# --- the decision on synthetic masks -----------------------------------------------------------------------------

def test_a_nodule_that_contains_the_click_is_found_with_its_size():
    check = decide(ball((24, 40, 40), 5.0), (24, 40, 40))
    assert check.found and check.click_inside and check.distance_mm == 0.0
    assert 10.0 <= check.longest_diameter_mm <= 12.5 and check.equivalent_diameter_mm == pytest.approx(10, abs=1)
    assert check.warnings == () and "contains the point" in check.reason


def test_a_structure_smaller_than_3_mm_at_the_click_is_refused():
    check = decide(ball((24, 40, 40), 1.0), (24, 40, 40))
    assert not check.found and check.longest_diameter_mm < 3.0
    assert check.reason.startswith("only a ") and "mm structure at the point" in check.reason


def test_a_click_far_from_the_only_component_is_refused_with_the_distance():
    mask = ball((24, 40, 40), 5.0)
    check = decide(mask, (24, 40, 40 + 13.0 / 0.7))  # 13 mm right of the centre: 8 mm from the surface
    assert not check.found and not check.click_inside
    assert check.distance_mm == pytest.approx(8.0, abs=0.8)
    assert f"the nearest segmented structure is {check.distance_mm:.1f} mm from the point" in check.reason


def test_a_click_just_outside_the_rim_is_accepted_with_a_warning():
    check = decide(ball((24, 40, 40), 5.0), (24, 40, 40 + 6.5 / 0.7))
    assert check.found and not check.click_inside and 0 < check.distance_mm <= 3.0
    assert any("outside the segmented nodule" in w for w in check.warnings)


def test_a_nodule_cut_by_the_volume_edge_is_accepted_and_says_so():
    check = decide(ball((0, 40, 40), 5.0), (1, 40, 40))  # centred on the first slice: half of it is outside
    assert check.found and check.volume_edges == ("z (first slice)",)
    assert any("edge of the scanned volume" in w for w in check.warnings)


def test_a_component_reaching_the_segmented_field_inside_the_image_is_refused():
    mask = np.zeros(SHAPE, np.uint8)
    mask[20:28, 38:42, 10:70] = 1  # a 42 mm long bar through the click
    inside_image = ((20, 10, 10), (60, 70, 40))  # field (i, j, k) low, high: its x faces at columns 20 and 59
    check = decide(mask, (24, 40, 40), inside_image)
    assert not check.found and check.field_edges == ("x (first column)", "x (last column)")
    assert "runs out of the field" in check.reason


def test_field_faces_outside_the_image_do_not_count():
    mask = ball((24, 40, 40), 5.0)
    mask[:, :, :] = 0
    mask[24, 40, 0:12] = 1  # reaches the image's first column, where the field starts outside the image
    check = decide(mask, (24, 40, 5), ((-20, 0, 0), (40, 80, 48)))
    assert check.found and check.field_edges == () and check.volume_edges == ("x (first column)",)


def test_a_structure_longer_than_the_upper_bound_is_refused():
    mask = np.zeros((48, 120, 120), np.uint8)
    mask[20:28, 55:60, 0:120] = 1  # 84 mm long
    ct = image_of(np.full(mask.shape, -850.0, np.float32))
    point = ct.TransformContinuousIndexToPhysicalPoint([60.0, 57.0, 24.0])
    check = check_nodule(ct, image_of(mask), image_of(mask.astype(np.float32)), point)
    assert not check.found and check.longest_diameter_mm > MAX_NODULE_DIAMETER_MM
    assert "upper bound" in check.reason


def test_nothing_segmented_is_refused():
    check = decide(np.zeros(SHAPE, np.uint8), (24, 40, 40))
    assert not check.found and check.distance_mm is None and "segmented nothing" in check.reason
    assert json.loads(json.dumps(check.to_json()))["found"] is False


def test_longest_diameter_reaches_the_outer_faces_of_the_voxels():
    spacing = np.asarray([2.5, 0.7, 0.7])
    row = np.array([[0, 0, x] for x in range(10)])
    assert longest_diameter_mm(row, spacing) == pytest.approx(7.0)  # 10 voxels of 0.7 mm
    assert longest_diameter_mm(np.array([[0, 0, 0]]), spacing) == pytest.approx(0.7)


def test_only_the_field_rule_triggers_a_second_segmentation_in_a_larger_field():
    calls = []

    class Segmenter:
        crop_mm = (48.0, 48.0, 40.0)

        def segment(self, ct, point, crop_mm=None):
            calls.append(crop_mm)
            mask = np.zeros(SHAPE, np.uint8)
            mask[20:28, 38:42, 10:70] = 1
            box = ((20, 10, 10), (60, 70, 40)) if crop_mm is None else ((-40, -40, -20), (120, 120, 70))
            crop = SimpleNamespace(origin=ct.TransformIndexToPhysicalPoint(box[0]),
                                   size=tuple(h - l for l, h in zip(*box)))
            return SimpleNamespace(mask=image_of(mask), probability=image_of(mask.astype(np.float32)), crop=crop)

    ct = image_of(np.zeros(SHAPE, np.float32))
    _, check = segment_and_check(Segmenter(), ct, ct.TransformContinuousIndexToPhysicalPoint([40.0, 40.0, 24.0]))
    assert calls == [None, [96.0, 96.0, 80.0]]
    assert check.found and check.field_edges == ()


# --- the path through the CLI, reports and worker (fake engine) ----------------------------------------------------

@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    from LungNoduleExplainLib.phantom import make_phantom_ct
    phantom = make_phantom_ct(seed=5, size=(96, 96, 48), diameter_mm=8.0, n_vessels=6)
    path = tmp_path_factory.mktemp("ct") / "phantom.nrrd"
    sitk.WriteImage(phantom.ct, str(path))
    return path, ",".join(f"{v:.3f}" for v in lps_to_ras(phantom.nodule_center_lps))


def run_cli(argv: list[str], no_nodule_at=(2,)) -> int:
    args = cli.build_parser().parse_args(["--quiet", *argv])
    return args.func(args, analyzer_factory=lambda **kw: FakeAnalyzer(**kw, no_nodule_at=no_nodule_at))


def test_several_points_with_one_off_nodule_write_the_others_and_mark_that_one(phantom_file, tmp_path, capsys):
    path, point = phantom_file
    out = tmp_path / "out"
    argv = ["analyze", str(path), "--point", point, "--point", point, "--point", point, "--out", str(out)]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "nodule-02: no nodule found: the nearest segmented structure is 7.8 mm from the point" in printed
    first, second = (json.loads((out / f"nodule-0{n}" / "finding.json").read_text()) for n in (1, 2))
    assert first["outputs"] and first.get("no_nodule_found") is None
    assert second["no_nodule_found"] is True and second["outputs"] == []
    assert second["reason"] == "the nearest segmented structure is 7.8 mm from the point"
    assert second["nodule_check"]["distance_mm"] == 7.8 and "notice" in second
    assert (out / "nodule-03" / "segmentation.nrrd").is_file()
    index = json.loads((out / "findings.json").read_text())
    assert [n.get("no_nodule_found", False) for n in index["nodules"]] == [False, True, False]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Point 2: no nodule found" in html and "7.8 mm from the point" in html
    assert "3 nodules analysed (1 point without a nodule)" in html


def test_a_single_point_without_a_nodule_exits_non_zero_with_the_reason(phantom_file, tmp_path, capsys):
    path, point = phantom_file
    args = cli.build_parser().parse_args(["analyze", str(path), "--point", point, "--out", str(tmp_path / "out")])
    with pytest.raises(NoNoduleError, match=r"--point 1: no nodule found at point .*7\.8 mm from the point"):
        args.func(args, analyzer_factory=lambda **kw: FakeAnalyzer(**kw, no_nodule_at=(1,)))
    assert not (tmp_path / "out").exists()


def test_exit_code_of_a_refused_single_point(phantom_file, tmp_path, capsys, monkeypatch):
    import LungNoduleExplainLib.analysis as analysis
    path, point = phantom_file
    monkeypatch.setattr(analysis, "Analyzer", lambda **kw: FakeAnalyzer(**kw, no_nodule_at=(1,)))
    code = cli.main(["--quiet", "analyze", str(path), "--point", point, "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no nodule found" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_all_points_without_a_nodule_is_an_error(phantom_file, tmp_path):
    path, point = phantom_file
    with pytest.raises(NoNoduleError, match="no nodule found at any of the 2 points"):
        run_cli(["analyze", str(path), "--point", point, "--point", point, "--out", str(tmp_path / "out")],
                no_nodule_at=(1, 2))


def test_classify_anyway_carries_the_warning_into_finding_json_and_the_report(phantom_file, tmp_path):
    path, point = phantom_file
    out = tmp_path / "out"
    assert run_cli(["analyze", str(path), "--point", point, "--classify-anyway", "--out", str(out)],
                   no_nodule_at=(1,)) == 0
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    assert body["outputs"] and body["nodule_check"]["found"] is False
    assert any(w.startswith("NO NODULE FOUND") for w in body["warnings"])
    assert "No nodule found at the point" in (out / "report.html").read_text(encoding="utf-8")


def test_the_worker_writes_a_no_nodule_entry_among_several_points(phantom_file, tmp_path):
    import io
    from LungNoduleExplainLib import worker
    path, point = phantom_file
    ras = [float(v) for v in point.split(",")]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"ct": str(path), "points": [ras, ras], "out_dir": str(tmp_path / "out")}))
    stream = io.StringIO()
    code = worker.main([str(request)], stream=stream, cuda_available=lambda: False,
                       analyzer_factory=lambda **kw: FakeAnalyzer(**kw, no_nodule_at=(1,)))
    assert code == 0, stream.getvalue()
    result = [json.loads(line) for line in stream.getvalue().splitlines() if '"result"' in line][0]
    first = json.loads(Path(result["findings"][0]).read_text())
    assert first["no_nodule_found"] is True and "7.8 mm" in first["reason"]
    assert json.loads(Path(result["findings"][1]).read_text())["outputs"]


def test_the_worker_request_round_trips_classify_anyway(tmp_path):
    from LungNoduleExplainLib.worker import Request, RequestError
    request = Request.from_json({"ct": "a.nrrd", "points": [[1, 2, 3]], "out_dir": "o", "classify_anyway": True})
    assert Request.from_json(request.to_json()).classify_anyway is True
    with pytest.raises(RequestError, match="classify_anyway"):
        Request.from_json({"ct": "a.nrrd", "points": [[1, 2, 3]], "out_dir": "o", "classify_anyway": "yes"})


# --- real CTs, real nnU-Net ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_segmenter():
    os.environ.setdefault("nnUNet_compile", "False")
    from LungNoduleExplainLib.bundle import default_bundle_path
    from LungNoduleExplainLib.errors import BundleError
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter
    try:
        return NoduleSegmenter(default_bundle_path() / "segmentation", device="cpu")
    except BundleError as exc:
        pytest.skip(f"the shipped nnU-Net cannot be loaded: {exc}")


@pytest.fixture(scope="module")
def real_cts(ct_dir):
    return {p: read_ct(ct_dir / p / "dicom") for p in ("LIDC-IDRI-0001", "LIDC-IDRI-0003")}


def off_nodule_points(kinds: tuple[str, ...]) -> list[dict]:
    with open(OFF_NODULE_CSV, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["kind"] in kinds and r["patient_id"] == "LIDC-IDRI-0001"]


@pytest.mark.parametrize("row", off_nodule_points(("lung", "chest_wall")),
                         ids=lambda r: f"{r['patient_id']}-{r['kind']}")
def test_off_nodule_clicks_on_real_cts_are_refused_or_flagged(row, real_cts, shipped_segmenter):
    """LIDC-IDRI-0001's lung and chest wall clicks of the benchmark's list (the whole list: benchmarks/nodule_gate):
    none may come back as a silent nodule."""
    point = [float(row[k]) for k in ("x_lps", "y_lps", "z_lps")]
    _, check = segment_and_check(shipped_segmenter, real_cts[row["patient_id"]], point)
    assert not check.found or any("outside the segmented nodule" in w for w in check.warnings), check.reason


@pytest.mark.parametrize("patient", ["LIDC-IDRI-0001", "LIDC-IDRI-0003"])
def test_the_real_nodules_are_accepted(patient, ct_dir, real_cts, shipped_segmenter):
    nodule = {n["patient_id"]: n for n in json.loads((ct_dir / "nodules.json").read_text())}[patient]
    _, check = segment_and_check(shipped_segmenter, real_cts[patient], nodule["centroid_lps_mm"])
    assert check.found and check.click_inside and 20.0 < check.longest_diameter_mm < 40.0, check.reason


def test_an_off_nodule_click_is_refused_by_analyze_and_classified_with_the_option(ct_dir, real_cts,
                                                                                  shipped_segmenter, tmp_path):
    """The real Analyzer (an untrained classifier: the gate comes before it) and the real nnU-Net on LIDC-IDRI-0001:
    a lung click is refused with the reason; --classify-anyway classifies it and finding.json carries the check."""
    from LungNoduleExplainLib.analysis import Analyzer

    bundle = untrained_bundle(tmp_path / "bundle")
    row = off_nodule_points(("lung",))[0]
    assert row["patient_id"] == "LIDC-IDRI-0001"
    ras = lps_to_ras([float(row[k]) for k in ("x_lps", "y_lps", "z_lps")])
    point = ",".join(f"{v:.2f}" for v in ras)

    def factory(**kw):
        return Analyzer(bundle, device="cpu", progress=kw.get("progress"), segmenter=shipped_segmenter)

    ct_path = str(ct_dir / "LIDC-IDRI-0001" / "dicom")
    args = cli.build_parser().parse_args(["--quiet", "analyze", ct_path, "--point", point, "--out",
                                          str(tmp_path / "refused")])
    with pytest.raises(NoNoduleError, match="the nearest segmented structure is .* mm from the point"):
        args.func(args, analyzer_factory=factory)
    out = tmp_path / "anyway"
    args = cli.build_parser().parse_args(["--quiet", "analyze", ct_path, "--point", point, "--classify-anyway",
                                          "--out", str(out)])
    assert args.func(args, analyzer_factory=factory) == 0
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    assert body["nodule_check"]["found"] is False and body["nodule_check"]["distance_mm"] > 3.0
    assert any(w.startswith("NO NODULE FOUND") for w in body["warnings"])


def test_the_partial_series_nodule_that_nnunet_misses_is_refused_with_what_was_found(ct_dir, shipped_segmenter):
    """LIDC-IDRI-0002 holds 7 of its nodule's 28 slices and nnU-Net's mask takes a neighbouring structure, not the
    click (test_cli_analyze PARTIAL_SERIES): the check says so instead of classifying that structure."""
    nodule = {n["patient_id"]: n for n in json.loads((ct_dir / "nodules.json").read_text())}["LIDC-IDRI-0002"]
    ct = read_ct(ct_dir / "LIDC-IDRI-0002" / "dicom")
    _, check = segment_and_check(shipped_segmenter, ct, nodule["centroid_lps_mm"])
    assert not check.found and not check.click_inside and check.distance_mm > 3.0
    assert check.reason.startswith(f"the nearest segmented structure is {check.distance_mm:.1f} mm from the point")
