"""Reports: every promised file, on the CT grid, atomic writing, and an HTML page that stands on its own."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib.finding import shown_pair
from LungNoduleExplainLib.reports import (PHANTOM_NOTICE, RESEARCH_NOTICE, OutputExistsError, add_report,
                                          check_on_grid, write_findings)
from LungNoduleExplainLib.region import box_in, on_full_grid
from LungNoduleExplainLib.reports.overlays import DisplayGrid

from fake_engine import FakeAnalyzer

# A small CT with a non-trivial geometry: flipped x axis, offset origin, anisotropic spacing.
DIRECTION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def small_ct() -> tuple[sitk.Image, tuple[float, float, float]]:
    """A 72 x 64 x 24 CT (air, a -850 HU lung box, a 10 mm, 40 HU ball) and the ball's centre (LPS mm)."""
    array = np.full((24, 64, 72), -1000, dtype=np.int16)
    array[2:22, 8:56, 8:64] = -850
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in array.shape), indexing="ij")
    dist = np.sqrt(((xx - 36) * 0.8) ** 2 + ((yy - 32) * 0.7) ** 2 + ((zz - 12) * 2.0) ** 2)
    array[dist <= 5.0] = 40
    ct = sitk.GetImageFromArray(array)
    ct.SetSpacing((0.8, 0.7, 2.0))
    ct.SetOrigin((30.0, -20.0, -100.0))
    ct.SetDirection(DIRECTION)
    return ct, ct.TransformContinuousIndexToPhysicalPoint((36.0, 32.0, 12.0))


def fake_finding(ct: sitk.Image, centre, n_outputs: int = 3):
    finding = FakeAnalyzer().analyze(ct, centre, space="lps")
    finding.outputs = finding.outputs[:n_outputs]
    finding.timings_s = {"segment": 0.5, "classify": 0.1}
    return finding


@pytest.fixture(scope="module")
def scene():
    ct, centre = small_ct()
    return ct, fake_finding(ct, centre)


@pytest.fixture(scope="module")
def single(scene):
    """The same CT with a one-output finding: quicker for the tests about folders rather than content."""
    ct, finding = scene
    return ct, fake_finding(ct, finding.point_lps, n_outputs=1)


@pytest.fixture(scope="module")
def written(scene, tmp_path_factory):
    ct, finding = scene
    out = tmp_path_factory.mktemp("report") / "out"
    report = write_findings([finding, finding], ct, out, title="Test report", source="small_ct")
    return out, report


def test_every_promised_file_exists_and_finding_json_lists_them(written, scene):
    out, report = written
    assert report == out / "report.html" and report.is_file()
    assert (out / "findings.json").is_file()
    for folder in ("nodule-01", "nodule-02"):
        body = json.loads((out / folder / "finding.json").read_text())
        files = body["files"]
        listed = [files["finding"], files["segmentation"], files["segmentation_probability"],
                  *files["maps"].values(), *files["overlays"].values()]
        for rel in listed:
            assert not Path(rel).is_absolute()
            assert (out / folder / rel).is_file(), rel
        names = [o.name for o in scene[1].outputs]
        assert sorted(files["maps"]) == sorted(names) == sorted(files["overlays"])
    assert not list(out.parent.glob(".out.*")), "the staging folder must be gone"


def test_finding_json_holds_the_summary_and_the_ct_grid(written, scene):
    out, _ = written
    ct, finding = scene
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    for key in ("point_lps_mm", "point_ras_mm", "outputs", "diameter_mm", "volume_mm3", "model", "timings_s",
                "warnings", "ct_grid", "files", "source", "nodule"):
        assert key in body, key
    assert body["notice"] == RESEARCH_NOTICE
    assert body["outputs"][0] == finding.summary()["outputs"][0]
    assert body["ct_grid"]["size"] == list(ct.GetSize())
    assert body["ct_grid"]["direction"] == list(DIRECTION)
    index = json.loads((out / "findings.json").read_text())
    assert [n["folder"] for n in index["nodules"]] == ["nodule-01", "nodule-02"]


def test_segmentation_and_maps_lie_on_the_ct_grid_over_the_nodules_region_only(written, scene):
    """One aligned sub-grid per nodule (the CT's spacing and direction, origin on a CT voxel), holding the maps'
    boxes and the segmented voxels, with the same voxels as the in-memory images."""
    out, _ = written
    ct, finding = scene
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    start, size = body["region"]["index_ijk"], body["region"]["size"]
    assert np.prod(size) < 0.9 * np.prod(ct.GetSize()), "the region is smaller than the CT"
    assert body["region"]["origin_lps_mm"] == pytest.approx(ct.TransformIndexToPhysicalPoint(start))
    expected = [(finding.segmentation, "segmentation.nrrd", sitk.sitkUInt8),
                (finding.segmentation_probability, "segmentation_probability.nrrd", sitk.sitkFloat32),
                *[(o.activation_map, f"maps/{o.name}.nrrd", sitk.sitkFloat32) for o in finding.outputs]]
    for image, rel, pixel_type in expected:
        written_image = sitk.ReadImage(str(out / "nodule-01" / rel))
        assert written_image.GetPixelID() == pixel_type, rel
        assert box_in(written_image, ct, rel) == (tuple(start), tuple(a + n for a, n in zip(start, size)))
        full, written_full = on_full_grid(image, ct), on_full_grid(written_image, ct)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written_full), sitk.GetArrayViewFromImage(full))
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "nodule-01" / "maps" / "malignancy.nrrd")))
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.9


def test_a_large_nodule_widens_the_region_beyond_the_maps_box(scene, tmp_path):
    ct, finding = scene
    big = copy.copy(finding)
    mask = np.zeros(tuple(reversed(ct.GetSize())), dtype=np.uint8)
    mask[12, 1:63, 2:70] = 1  # reaches beyond the maps' +-20 mm box in-plane
    big.segmentation = sitk.GetImageFromArray(mask)
    big.segmentation.CopyInformation(ct)
    write_findings([big], ct, tmp_path / "out", title="t", source="s")
    seg = sitk.ReadImage(str(tmp_path / "out" / "nodule-01" / "segmentation.nrrd"))
    assert int(sitk.GetArrayViewFromImage(seg).sum()) == int(mask.sum()), "no segmented voxel is cut off"
    (i0, j0, _), (i1, j1, _) = box_in(seg, ct)
    assert (i0, j0) == (0, 0) and (i1, j1) == (72, 64)  # the nodule's box grown by 2 voxels, clipped to the CT


def test_html_is_self_contained_with_the_notice_and_one_embedded_image_per_output(written, scene):
    _, report = written
    html = report.read_text(encoding="utf-8")
    assert RESEARCH_NOTICE in html
    assert PHANTOM_NOTICE not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == 2 * len(scene[1].outputs)
    assert "<link" not in html and "http://" not in html and "https://" not in html
    for phrase in ("Equivalent diameter", "Volume", "Threshold", "fake", "Timings", "Malignancy"):
        assert phrase in html


def test_html_says_plainly_when_the_image_is_a_phantom(single, tmp_path):
    ct, finding = single
    report = write_findings([finding], ct, tmp_path / "out", title="Demo", source="phantom", is_phantom=True,
                            extra_images={"phantom_ct.nrrd": ct})
    assert "synthetic phantom" in report.read_text(encoding="utf-8")
    assert "not a patient" in report.read_text(encoding="utf-8")
    assert (tmp_path / "out" / "phantom_ct.nrrd").is_file()
    assert json.loads((tmp_path / "out" / "findings.json").read_text())["is_phantom"] is True


def test_warnings_appear_in_the_report(single, tmp_path):
    ct, finding = single
    finding = fake_finding(ct, finding.point_lps, n_outputs=1)
    finding.warnings.append("segmentation touches the patch border")
    html = write_findings([finding], ct, tmp_path / "o", title="t", source="s").read_text(encoding="utf-8")
    assert "segmentation touches the patch border" in html


def test_a_non_empty_output_folder_is_refused_without_overwrite(single, tmp_path):
    ct, finding = single
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        write_findings([finding], ct, out, title="t", source="s")
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_folder_and_an_empty_folder_is_used(single, tmp_path):
    ct, finding = single
    out = tmp_path / "out"
    out.mkdir()
    write_findings([finding], ct, out, title="t", source="s")  # empty folder: fine
    (out / "stale.txt").write_text("old")
    write_findings([finding], ct, out, title="t", source="s", overwrite=True)
    assert (out / "report.html").is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failure_midway_leaves_no_output_folder_and_no_leftovers(single, tmp_path):
    ct, finding = single

    def fail_on_second_nodule(fraction: float, message: str) -> None:
        if "nodule 2" in message:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_findings([finding, finding], ct, tmp_path / "out", title="t", source="s",
                       progress=fail_on_second_nodule)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_previous_report(single, tmp_path):
    ct, finding = single
    out = tmp_path / "out"
    write_findings([finding], ct, out, title="first", source="s")

    def fail(fraction: float, message: str) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_findings([finding], ct, out, title="second", source="s", overwrite=True, progress=fail)
    assert "first" in (out / "report.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_map_off_the_ct_grid_is_refused_before_anything_is_written(scene, tmp_path):
    ct, finding = scene
    bad = fake_finding(ct, finding.point_lps)
    shifted = sitk.Image(bad.outputs[1].activation_map)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    bad.outputs[1].activation_map = shifted
    with pytest.raises(ValueError, match="spiculated.*not on the CT grid: origin"):
        write_findings([bad], ct, tmp_path / "out", title="t", source="s")
    assert not (tmp_path / "out").exists()


def test_a_map_outside_zero_to_one_is_refused(scene, tmp_path):
    ct, finding = scene
    bad = fake_finding(ct, finding.point_lps)
    bad.outputs[0].activation_map = bad.outputs[0].activation_map * 2.0
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        write_findings([bad], ct, tmp_path / "out", title="t", source="s")


def test_display_planes_follow_the_radiological_convention():
    """A bright voxel at the patient's left-posterior-cranial side shows right, bottom, top, as a reader expects."""
    array = np.zeros((40, 40, 40), dtype=np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((19.5, -19.5, -19.5))
    image.SetDirection(DIRECTION)  # flipped x: the display must still put patient left on the right
    target = (10.0, 10.0, 10.0)  # LPS: left, posterior, cranial of the centre
    index = image.TransformPhysicalPointToIndex(target)
    array[index[2], index[1], index[0]] = 1.0
    bright = sitk.GetImageFromArray(array)
    bright.CopyInformation(image)
    grid = DisplayGrid((0.0, 0.0, 10.0), spacing_mm=1.0, size=41)
    axial = grid.sample(bright, "axial", default=0.0, interpolator=sitk.sitkNearestNeighbor)
    row, col = np.unravel_index(np.argmax(axial), axial.shape)
    assert (col, row) == (30, 30)  # right of centre (patient left), below centre (posterior)
    assert grid.to_pixel(target, "axial") == (30.0, 30.0)
    grid = DisplayGrid((0.0, 10.0, 0.0), spacing_mm=1.0, size=41)
    coronal = grid.sample(bright, "coronal", default=0.0, interpolator=sitk.sitkNearestNeighbor)
    row, col = np.unravel_index(np.argmax(coronal), coronal.shape)
    assert (col, row) == (30, 10)  # patient left on the right, cranial at the top
    assert grid.to_pixel(target, "coronal") == (30.0, 10.0)


def test_the_output_folder_gets_ordinary_permissions(single, tmp_path):
    ct, finding = single
    write_findings([finding], ct, tmp_path / "out", title="t", source="s")
    assert (tmp_path / "out").stat().st_mode & 0o077 == 0o777 & ~_umask() & 0o077


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_probability_in_the_html_is_shown_with_its_threshold(written, scene):
    """Figure captions too: a probability without its threshold cannot be read as positive or negative."""
    _, report = written
    html = report.read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert len(captions) == 2 * len(scene[1].outputs)
    for caption in captions:
        assert "probability" in caption and "threshold" in caption, caption


@pytest.mark.parametrize("probability, threshold, shown", [
    (0.62, 0.4, ("0.62", "0.40")),            # two decimals where they differ
    (0.5712, 0.5749, ("0.571", "0.575")),     # "0.57, negative (threshold 0.57)" would read as a contradiction
    (0.570001, 0.569999, ("0.5700", "0.5700")),  # at most four: positive at >=, shown as equal
])
def test_probability_and_threshold_are_shown_with_the_digits_that_tell_them_apart(probability, threshold, shown):
    assert shown_pair(probability, threshold) == shown


def test_a_probability_just_under_its_threshold_does_not_look_equal_in_the_report(single, tmp_path):
    ct, finding = single
    finding = copy.copy(finding)
    finding.outputs = [dataclasses.replace(finding.outputs[0], probability=0.5712, threshold=0.5749)]
    html = write_findings([finding], ct, tmp_path / "out", title="t", source="s").read_text(encoding="utf-8")
    assert "0.571" in html and "0.575" in html
    assert not re.search(r"\b0\.57\b", html), "a two-decimal 0.57 beside its threshold would hide the verdict"


def test_the_report_gives_the_axial_long_and_short_axis_beside_volume_and_equivalent_diameter(written, scene):
    out, report = written
    finding = scene[1]
    body = json.loads((out / "nodule-01" / "finding.json").read_text())
    # the fake's 6 mm radius sphere, sampled at 0.8 x 0.7 mm in-plane: about 12 mm both ways on its widest slice
    assert body["long_axis_mm"] == pytest.approx(12.0, abs=1.0)
    assert body["short_axis_mm"] == pytest.approx(12.0, abs=1.0)
    assert body["short_axis_mm"] <= body["long_axis_mm"]
    html = report.read_text(encoding="utf-8")
    assert f"{finding.axial.long_mm:.1f} × {finding.axial.short_mm:.1f} mm" in html
    assert "Long × short axis (axial)" in html and "Equivalent diameter" in html


def test_calls_are_coloured_by_meaning_not_by_positive(written, scene):
    _, report = written
    html = report.read_text(encoding="utf-8")
    # fake outputs: malignancy 0.2 (negative: reassuring), spiculated 0.5 (positive: concerning),
    # calcified 0.8 (positive: reassuring)
    assert '<span class="tone-reassuring">negative (reassuring)</span>' in html
    assert '<span class="tone-concerning">positive (concerning)</span>' in html
    assert '<span class="tone-reassuring">positive (reassuring)</span>' in html
    assert 'class="pos"' not in html


def test_the_title_and_study_card_name_the_patient_and_series_from_the_dicom_header(single, tmp_path):
    from LungNoduleExplainLib.study import StudyInfo

    ct, finding = single
    study = StudyInfo(name="dicom", patient_id="LIDC-IDRI-0001", study_date="2000-01-01", series_number="3000566",
                      modality="CT")
    report = write_findings([finding], ct, tmp_path / "out", title=f"Lung nodule analysis: {study.title()}",
                            source="/data/LIDC-IDRI-0001/dicom", study=study)
    html = report.read_text(encoding="utf-8")
    assert "<h1>Lung nodule analysis: LIDC-IDRI-0001 · CT 2000-01-01 · series 3000566</h1>" in html
    assert "<td>Patient ID</td><td>LIDC-IDRI-0001</td>" in html
    index = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert index["study"]["patient_id"] == "LIDC-IDRI-0001"
    assert json.loads((tmp_path / "out" / "nodule-01" / "finding.json").read_text())["study"]["series_number"] \
        == "3000566"


def test_the_map_colour_has_a_legend_in_the_html_and_on_each_overlay(written, scene):
    from html import escape

    from LungNoduleExplainLib.reports.overlays import MAP_SCALE_LABEL, OverlayRenderer, PlaneStack

    _, report = written
    html = report.read_text(encoding="utf-8")
    assert html.count('class="mapbar"') == 2 and "linear-gradient" in html
    assert escape(MAP_SCALE_LABEL) in html
    ct, finding = scene
    renderer = OverlayRenderer(PlaneStack.build(ct, finding.segmentation, finding.point_lps, finding.diameter_mm))
    bar = renderer.figure.axes[-1]
    assert MAP_SCALE_LABEL in bar.get_ylabel()
    assert [t.get_text() for t in bar.get_yticklabels()][::3] == ["0.25 weak", "1 strongest"]


def test_a_report_added_later_gives_the_folder_written_at_once(written, scene, tmp_path):
    """The Slicer worker writes a viewer's files first (report=False) and the overlays and report.html after."""
    ct, finding = scene
    out = tmp_path / "later"
    write_findings([finding, finding], ct, out, title="Test report", source="small_ct", report=False)
    assert not (out / "report.html").exists() and not (out / "nodule-01" / "overlays").exists()
    assert json.loads((out / "nodule-01" / "finding.json").read_text())["files"]["overlays"] == {}
    assert add_report([finding, finding], ct, out, title="Test report", source="small_ct") == out / "report.html"
    at_once = written[0]
    for folder in ("nodule-01", "nodule-02"):
        files = json.loads((out / folder / "finding.json").read_text())["files"]
        assert files == json.loads((at_once / folder / "finding.json").read_text())["files"]
        assert all((out / folder / rel).is_file() for rel in files["overlays"].values())
    page, reference = ((o / "report.html").read_text(encoding="utf-8") for o in (out, at_once))
    assert page.count("data:image/png;base64,") == reference.count("data:image/png;base64,") > 0
    assert not list(out.glob(".*partial"))
