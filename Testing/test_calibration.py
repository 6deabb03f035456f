"""Calibration (issue 19 item 2) and member spread (item 3): ECE/Brier by hand, the fitted maps, the calibrator
stored, checksummed, validated and applied, and the spread shown per output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from LungNoduleExplainLib.bundle import WEIGHTS_NAME, add_calibration, load_bundle, save_bundle, sha256
from LungNoduleExplainLib.calibration import (CALIBRATION_NAME, UNCALIBRATED_NOTICE, apply_output, fit_calibration,
                                              fit_output)
from LungNoduleExplainLib.cli import main
from LungNoduleExplainLib.errors import BundleError
from LungNoduleExplainLib.metrics import brier_score, calibration_with_ci, expected_calibration_error
from LungNoduleExplainLib.networks import Ensemble, NetworkConfig, build_network
from LungNoduleExplainLib.tasks import load_task_set

TINY = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))


# --- ECE and Brier against a hand computation ----------------------------------------------------------------------

def test_ece_and_brier_match_a_hand_computation() -> None:
    y = np.array([0, 1, 1, 0, 1, np.nan])
    p = np.array([0.05, 0.15, 0.12, 0.85, 1.0, 0.5])  # the unlabelled last entry is left out; p = 1 is bin 9
    # bins: [0, .1): {0.05 | 0} -> |0 - .05|; [.1, .2): {.15, .12 | 1, 1} -> |1 - .135| twice;
    # [.8, .9): {.85 | 0} -> .85; [.9, 1]: {1.0 | 1} -> 0
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 2 * 0.865 + 0.85 + 0.0) / 5)
    assert brier_score(y, p) == pytest.approx((0.05 ** 2 + 0.85 ** 2 + 0.88 ** 2 + 0.85 ** 2 + 0.0) / 5)


def test_a_perfectly_binned_prediction_has_zero_ece_and_the_bootstrap_ci_brackets_it() -> None:
    y = np.array([0, 0, 0, 1] * 10, dtype=float)
    p = np.full(40, 0.25)
    result = calibration_with_ci(y, p, [f"p{i // 2}" for i in range(40)], n_boot=200)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    assert result["brier"] == pytest.approx(0.1875)
    assert result["ece_ci_low"] <= result["ece_ci_high"] and result["brier_ci_low"] <= 0.1875 <= result["brier_ci_high"]


# --- fitting -------------------------------------------------------------------------------------------------------

def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw scores sigmoid(3 z + 1) for labels drawn from sigmoid(z): over-confident and biased upwards."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return 1 / (1 + np.exp(-(3 * z + 1))), y, np.array([f"patient{i // 2}" for i in range(n)])


def test_the_fitted_map_lowers_ece_on_new_patients_and_keeps_every_call() -> None:
    p, y, groups = _overconfident()
    params = fit_output(p, y, groups)
    assert params["method"] == "logistic"  # the truth is logistic in the logit: it should win on log-loss
    assert params["slope"] == pytest.approx(1 / 3, rel=0.25)
    p_new, y_new, _ = _overconfident(seed=1)
    assert expected_calibration_error(y_new, apply_output(params, p_new)) < 0.5 * expected_calibration_error(y_new, p_new)
    threshold = 0.6
    assert np.array_equal(p_new >= threshold, apply_output(params, p_new) >= apply_output(params, threshold))


def test_an_isotonic_map_with_flats_is_still_strictly_increasing_so_no_call_changes() -> None:
    params = {"method": "isotonic", "x": [0.1, 0.4, 0.6, 0.9], "y": [0.2, 0.3, 0.3, 0.8]}  # flat on [0.4, 0.6]
    p = np.linspace(0, 1, 1001)
    q = apply_output(params, p)
    assert np.all(np.diff(q) > 0) and np.max(np.abs(q - np.interp(p, params["x"], params["y"]))) <= 1e-4
    t = 0.5  # inside the flat: raw 0.45 and 0.55 fall on either side and must stay there
    assert np.array_equal(p >= t, q >= apply_output(params, t))


def test_fit_calibration_maps_each_threshold_through_its_output() -> None:
    p, y, groups = _overconfident()
    doc = fit_calibration(np.stack([p, p], 1), np.stack([y, y], 1), groups, ["a", "b"], {"a": 0.5, "b": 0.7}, "test")
    for name, raw in (("a", 0.5), ("b", 0.7)):
        o = doc["outputs"][name]
        assert o["raw_threshold"] == raw and o["threshold"] == pytest.approx(float(apply_output(o, raw)))
    json.dumps(doc, allow_nan=False)  # plain JSON, nothing pickled


# --- in the bundle -------------------------------------------------------------------------------------------------

def _calibration_for(names: list[str]) -> dict:
    outputs = {n: {"method": "logistic", "slope": 0.5, "intercept": -1.0, "raw_threshold": 0.5,
                   "threshold": float(apply_output({"method": "logistic", "slope": 0.5, "intercept": -1.0}, 0.5))}
               for n in names}
    outputs[names[1]] = {"method": "isotonic", "x": [0.2, 0.8], "y": [0.1, 0.4], "raw_threshold": 0.5,
                         "threshold": float(apply_output({"method": "isotonic", "x": [0.2, 0.8], "y": [0.1, 0.4]},
                                                         0.5))}
    return {"format_version": 1, "outputs": outputs}


def _bundle(path: Path, members: int = 1, calibration: dict | None = None) -> Path:
    task_set = load_task_set("lidc")
    torch.manual_seed(0)
    nets = [build_network(TINY, len(task_set.manifestations)) for _ in range(members)]
    model = nets[0] if members == 1 else Ensemble(nets)
    return save_bundle(path, model, task_set, TINY, {n: 0.5 for n in task_set.names}, name="test", prior="nnunet",
                       training={}, metrics={}, calibration=calibration)


def test_a_calibrated_bundle_stores_checksums_and_applies_its_maps(tmp_path: Path) -> None:
    names = load_task_set("lidc").names
    doc = _calibration_for(names)
    path = _bundle(tmp_path / "bundle", calibration=doc)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"][CALIBRATION_NAME] == sha256(path / CALIBRATION_NAME)
    bundle = load_bundle(path)
    assert bundle.calibrated and bundle.call_thresholds[names[0]] == doc["outputs"][names[0]]["threshold"]
    raw = np.array([[0.5] * len(names), [0.9] * len(names)])
    shown = bundle.calibrate(raw)
    assert shown[0, 0] == pytest.approx(1 / (1 + math.exp(1.0)))  # sigmoid(0.5 * logit(0.5) - 1)
    assert shown[1, 1] == pytest.approx((1 - 1e-4) * 0.4 + 1e-4 * 0.9)  # beyond the last knot: clipped, + tie slope
    assert bundle.thresholds[names[0]] == 0.5  # the manifest's raw thresholds stay for raw scores


def test_a_tampered_calibration_is_refused_by_its_checksum(tmp_path: Path) -> None:
    names = load_task_set("lidc").names
    path = _bundle(tmp_path / "bundle", calibration=_calibration_for(names))
    doc = json.loads((path / CALIBRATION_NAME).read_text())
    doc["outputs"][names[0]]["intercept"] = 3.0
    (path / CALIBRATION_NAME).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=f"checksum mismatch for {CALIBRATION_NAME}"):
        load_bundle(path)


def _rewrite_calibration(path: Path, doc: dict) -> None:
    """Replace calibration.json and its checksum (a consistent bundle whose content is wrong)."""
    (path / CALIBRATION_NAME).write_text(json.dumps(doc))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][CALIBRATION_NAME] = sha256(path / CALIBRATION_NAME)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda o: o.update(spiky=dict(o["malignant"])), r"unknown output\(s\) \['spiky'\].*outputs are"),
    (lambda o: o.pop("lobulated"), r"no calibrator for output\(s\) \['lobulated'\]"),
    (lambda o: o["malignant"].update(slope=-1.0), r"output 'malignant'.*slope' > 0"),
    (lambda o: o["obvious"].update(y=[0.5, 0.2]), r"output 'obvious'.*non-decreasing"),
    (lambda o: o["round"].update(method="pickle"), r"output 'round'.*'method' one of"),
    (lambda o: o["round"].pop("threshold"), r"output 'round'.*calibrated threshold"),
])
def test_a_wrong_calibrator_is_refused_naming_the_file_and_output(tmp_path: Path, change, message) -> None:
    names = load_task_set("lidc").names
    path = _bundle(tmp_path / "bundle", calibration=_calibration_for(names))
    doc = _calibration_for(names)
    change(doc["outputs"])
    _rewrite_calibration(path, doc)
    with pytest.raises(BundleError, match=CALIBRATION_NAME) as error:
        load_bundle(path)
    assert error.match(message)
    with pytest.raises(BundleError, match=message):  # and the verb refuses to write it in the first place
        add_calibration(_bundle(tmp_path / "other"), doc)
    assert not (tmp_path / "other" / CALIBRATION_NAME).exists()


def test_a_bundle_without_calibration_loads_as_uncalibrated(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path / "bundle"))
    raw = np.array([[0.3] * len(bundle.output_names)])
    assert not bundle.calibrated and bundle.calibrate(raw) is raw and bundle.call_thresholds == bundle.thresholds


def test_the_calibrate_verb_adds_a_checksummed_calibration_and_leaves_the_weights_alone(tmp_path: Path,
                                                                                     capsys) -> None:
    path = _bundle(tmp_path / "bundle")
    weights = (path / WEIGHTS_NAME).read_bytes()
    names = load_task_set("lidc").names
    p, y, groups = _overconfident(200)
    with (tmp_path / "oof.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "patient_id"] + [f"{n}_label" for n in names] + [f"{n}_oof" for n in names])
        for i in range(len(p)):
            writer.writerow([f"c{i}", groups[i]] + [int(y[i])] * len(names) + [f"{p[i]:.6f}"] * len(names))
    assert main(["calibrate", "--model", str(path), "--predictions", str(tmp_path / "oof.csv")]) == 0
    assert (path / WEIGHTS_NAME).read_bytes() == weights
    bundle = load_bundle(path)
    assert bundle.calibrated and set(bundle.calibration.outputs) == set(names)
    assert "calibration written" in capsys.readouterr().out
    with (tmp_path / "bad.csv").open("w") as fh:
        fh.write("case_id,patient_id,malignant_oof\nc,p,0.5\n")
    assert main(["calibrate", "--model", str(path), "--predictions", str(tmp_path / "bad.csv")]) == 2
    assert "malignant_label" in capsys.readouterr().err


# --- member spread ---------------------------------------------------------------------------------------------------

class SphereSegmenter:
    """Segments a 5 mm radius ball around the click (probability 0.9 inside): a nodule-sized component at a real
    nodule's centre, so the analysis goes on to the classifier without an nnU-Net model."""

    def segment(self, ct, point_lps, crop_mm=None):  # noqa: ANN001, ANN201 - as NoduleSegmenter.segment
        from types import SimpleNamespace

        import SimpleITK as sitk
        from fake_engine import _distance_mm

        inside = _distance_mm(ct, np.asarray(point_lps)) <= 5.0
        images = [sitk.GetImageFromArray(a) for a in (inside.astype(np.float32) * 0.9, inside.astype(np.uint8))]
        for image in images:
            image.CopyInformation(ct)
        return SimpleNamespace(probability=images[0], mask=images[1])


def _analyze(bundle_path: Path, ct_dir: Path):  # noqa: ANN202
    from test_cli_analyze import _nodules

    from LungNoduleExplainLib.analysis import Analyzer
    from LungNoduleExplainLib.volume import read_ct

    nodule = _nodules(ct_dir)["LIDC-IDRI-0003"]
    ct = read_ct(ct_dir / "LIDC-IDRI-0003" / "dicom")
    analyzer = Analyzer(bundle_path, device="cpu", segmenter=SphereSegmenter())
    return analyzer.analyze(ct, nodule["centroid_lps_mm"], space="lps")


def test_an_ensemble_finding_carries_calibrated_member_probabilities_and_their_spread(tmp_path: Path,
                                                                                      ct_dir: Path) -> None:
    names = load_task_set("lidc").names
    path = _bundle(tmp_path / "bundle", members=3, calibration=_calibration_for(names))
    finding = _analyze(path, ct_dir)
    bundle = load_bundle(path)
    assert finding.calibrated and UNCALIBRATED_NOTICE not in finding.warnings
    for k, o in enumerate(finding.outputs):
        assert len(o.member_probabilities) == 3
        # the members' raw probabilities average to the ensemble's (Ensemble.forward): undo the logistic map
        raw_members = [1 / (1 + math.exp(-((math.log(q / (1 - q)) + 1.0) / 0.5))) for q in o.member_probabilities] \
            if bundle.calibration.method(o.name) == "logistic" else None
        if raw_members is not None:
            assert np.mean(raw_members) == pytest.approx(o.raw_probability, abs=1e-5)
        assert o.probability == pytest.approx(float(bundle.calibrate(np.array([[o.raw_probability] * 8]))[0, k]))
        assert o.threshold == bundle.call_thresholds[o.name] and o.raw_threshold == 0.5
        # each member through the same map: the members' calibrated values are monotone in their raw ones
        assert min(o.member_probabilities) <= max(o.member_probabilities)
    summary = finding.summary()
    entry = summary["outputs"][0]
    assert summary["calibrated"] is True and entry["raw_probability"] is not None
    assert entry["member_spread"]["min"] <= entry["probability"] + 0.05 and entry["members_disagree"] in (True, False)


def test_members_disagree_when_they_fall_on_both_sides_of_the_threshold() -> None:
    from LungNoduleExplainLib.finding import OutputResult

    def output(members: list[float]) -> OutputResult:
        return OutputResult("malignant", "diagnosis", "", 0.6, 0.5, None, member_probabilities=members)

    assert output([0.45, 0.7]).members_disagree and output([0.45, 0.7]).spread_text == "members 0.45-0.70, members disagree"
    assert not output([0.55, 0.7]).members_disagree and output([0.55, 0.7]).spread_text == "members 0.55-0.70"
    single = output([])
    assert not single.has_spread and single.member_range is None and not single.members_disagree


def test_a_single_network_finding_shows_no_spread_and_an_uncalibrated_bundle_says_so(tmp_path: Path,
                                                                                        ct_dir: Path) -> None:
    finding = _analyze(_bundle(tmp_path / "bundle"), ct_dir)
    assert not finding.calibrated and UNCALIBRATED_NOTICE in finding.warnings
    entry = finding.summary()["outputs"][0]
    assert entry["member_probabilities"] == [] and entry["member_spread"] is None and entry["members_disagree"] is None
    assert entry["probability"] == entry["raw_probability"]


def test_an_ensemble_run_stores_the_calibrator_of_its_out_of_fold_predictions() -> None:
    from types import SimpleNamespace

    from LungNoduleExplainLib.runs import _fit_members_calibration

    p, y, groups = _overconfident(300)
    train_set = SimpleNamespace(labels=np.stack([y, 1 - y], 1), patient_ids=list(groups))
    doc, calibrate = _fit_members_calibration(np.stack([p, 1 - p], 1), train_set, ["a", "b"], {"a": 0.5, "b": 0.4})
    assert set(doc["outputs"]) == {"a", "b"} and doc["outputs"]["b"]["raw_threshold"] == 0.4
    shown = calibrate(np.stack([p, 1 - p], 1))
    assert expected_calibration_error(y, shown[:, 0]) < expected_calibration_error(y, p)
    train_set.labels[:, 1] = 0  # an output without positives: no calibration at all, probabilities stay raw
    doc, calibrate = _fit_members_calibration(np.stack([p, 1 - p], 1), train_set, ["a", "b"], {"a": 0.5, "b": 0.4})
    assert doc is None and calibrate(p) is p


def test_the_report_table_shows_the_members_range_the_disagreement_and_whether_calibrated() -> None:
    from types import SimpleNamespace

    from LungNoduleExplainLib.finding import OutputResult
    from LungNoduleExplainLib.reports.html import _outputs_table

    spread = OutputResult("malignant", "diagnosis", "", 0.83, 0.5, None, member_probabilities=[0.71, 0.9, 0.8])
    straddle = OutputResult("spiculated", "manifestation", "", 0.45, 0.4, None, member_probabilities=[0.3, 0.5])
    html = _outputs_table(SimpleNamespace(outputs=[spread, straddle], calibrated=True))
    assert "0.83 <span" in html and "(members 0.71-0.90)" in html and html.count("members disagree</span>") == 1
    assert "calibrated on patients" in html
    single = OutputResult("malignant", "diagnosis", "", 0.83, 0.5, None)
    html = _outputs_table(SimpleNamespace(outputs=[single], calibrated=False))
    assert "(members" not in html and "NOT calibrated" in html and "single network" in html.lower()
