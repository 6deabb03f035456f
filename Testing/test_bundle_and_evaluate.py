"""Model bundles (checksums, safe loading) and `evaluate` on a small folder of real VOIs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from LungNoduleExplainLib.bundle import WEIGHTS_NAME, load_bundle, save_bundle
from LungNoduleExplainLib.cli import main
from LungNoduleExplainLib.errors import BundleError, ConfigError, DatasetError, InputImageError
from LungNoduleExplainLib.networks import NetworkConfig, build_network
from LungNoduleExplainLib.tasks import load_task_set

N_FIXTURE = 16


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    task_set = load_task_set("lidc")
    network = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))
    torch.manual_seed(0)
    model = build_network(network, len(task_set.manifestations))
    return save_bundle(tmp_path / "bundle", model, task_set, network, {n: 0.5 for n in task_set.names},
                       name="test-bundle", prior="reference-mask", training={"note": "untrained"}, metrics={})


@pytest.fixture()
def fixture_folder(voi_dir: Path, tmp_path: Path) -> Path:
    """A small dataset folder in the lidc-voi format (real VOIs), with both malignancy classes."""
    rows = list(csv.DictReader((voi_dir / "nodules.csv").open()))
    benign = [r for r in rows if r["malignancy"] in ("1", "2")][:N_FIXTURE // 2]
    malignant = [r for r in rows if r["malignancy"] in ("4", "5")][:N_FIXTURE // 2]
    folder = tmp_path / "voi"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for row in benign + malignant:
        for key in ("image", "mask"):
            shutil.copy(voi_dir / row[key], folder / row[key])
    with (folder / "nodules.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(benign + malignant)
    return folder


def test_a_saved_bundle_loads_with_the_same_weights_and_its_manifest(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["spacing_xyz_mm"] == [0.7, 0.7, 1.25] and manifest["patch_size_xyz"] == [64, 64, 32]
    assert set(manifest["files"]) == {WEIGHTS_NAME}
    assert "research" in manifest["intended_use"]
    assert bundle.output_names[0] == "malignant" and bundle.thresholds["spiculated"] == 0.5
    assert not bundle.model.training


def test_a_bundle_loaded_on_cpu_runs_its_convolutions_through_onednn_with_the_same_outputs(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir, device="cpu")
    convolutions = {type(m).__name__ for m in bundle.model.modules() if isinstance(m, torch.nn.Conv3d)}
    assert convolutions == {"OneDnnConv3d"}  # a click classifies a batch of one
    plain = build_network(bundle.network, len(bundle.task_set.manifestations)).eval()
    plain.load_state_dict(bundle.model.state_dict())
    image, prior = torch.rand(1, 1, 32, 64, 64), torch.rand(1, 1, 32, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(bundle.model(image, prior), plain(image, prior), atol=1e-5, rtol=1e-4)


def test_a_bundle_with_a_wrong_checksum_is_refused_naming_the_file(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch for {WEIGHTS_NAME}"):
        load_bundle(bundle_dir)


def test_a_folder_without_manifest_or_with_a_missing_file_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="manifest.json not found"):
        load_bundle(tmp_path)
    (bundle_dir / WEIGHTS_NAME).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_dir)


def test_the_shipped_default_bundle_verifies_and_loads() -> None:
    from LungNoduleExplainLib.bundle import default_bundle_path
    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip("no default bundle in this checkout")
    bundle = load_bundle()
    assert bundle.output_names == load_task_set("lidc").names
    # shipped calibrated: one map per output, thresholds mapped through it (docs: MODEL_CARD.md, Calibration)
    assert bundle.calibrated and set(bundle.calibration.outputs) == set(bundle.output_names)
    for name, params in bundle.calibration.outputs.items():
        assert params["raw_threshold"] == bundle.thresholds[name]
    assert sum(f.stat().st_size for f in bundle.path.rglob("*") if f.is_file()) < 20 * 2 ** 20


def test_evaluate_writes_metrics_predictions_and_roc_on_an_unseen_folder(bundle_dir: Path, fixture_folder: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = main(["--quiet", "evaluate", "--data", str(fixture_folder), "--model", str(bundle_dir), "--out", str(out),
                 "--bootstrap", "50", "--prior", "reference-mask", "--device", "cpu"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_nodules"] == N_FIXTURE and metrics["prior"] == "reference-mask"
    m = metrics["outputs"]["malignant"]
    for key in ("auc", "ci_low", "ci_high", "accuracy", "sensitivity", "precision", "f1", "threshold",
                "n", "n_positive", "n_patients"):
        assert key in m, key
    assert m["n"] == N_FIXTURE and m["n_positive"] == N_FIXTURE // 2
    assert 0.0 <= m["auc"] <= 1.0 and m["ci_low"] <= m["auc"] <= m["ci_high"]
    assert m["size_baseline"]["auc"] > 0.5  # malignant nodules are bigger, even in 16 of them
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == N_FIXTURE and all(0 <= float(r["malignant_probability"]) <= 1 for r in rows)
    assert (out / "roc_curves.png").stat().st_size > 10_000
    # an uncalibrated bundle says so; ECE and Brier of the raw scores, recomputed from predictions.csv
    assert metrics["calibrated"] is False and "no calibration.json" in metrics["warnings"][0]
    y = np.array([float(r["malignant_label"]) for r in rows])
    p = np.array([float(r["malignant_probability"]) for r in rows])
    assert m["brier"] == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-4)
    assert m["ece_ci_low"] <= m["ece_ci_high"] and 0.0 <= m["ece"] <= 1.0
    assert (out / "reliability.png").stat().st_size > 10_000


def test_evaluate_shows_calibrated_probabilities_and_thresholds_with_the_raw_calibration_beside(
        bundle_dir: Path, fixture_folder: Path, tmp_path: Path) -> None:
    from LungNoduleExplainLib.bundle import add_calibration
    from LungNoduleExplainLib.calibration import apply_output
    from LungNoduleExplainLib.metrics import expected_calibration_error

    names = load_task_set("lidc").names
    params = {"method": "logistic", "slope": 2.0, "intercept": -0.5}
    add_calibration(bundle_dir, {"outputs": {n: {**params, "threshold": float(apply_output(params, 0.5))}
                                             for n in names}})
    out = tmp_path / "eval"
    assert main(["--quiet", "evaluate", "--data", str(fixture_folder), "--model", str(bundle_dir), "--out", str(out),
                 "--bootstrap", "20", "--prior", "reference-mask", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibrated"] is True and metrics["warnings"] == []
    m = metrics["outputs"]["malignant"]
    assert m["threshold"] == pytest.approx(float(apply_output(params, 0.5)))
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    raw = np.array([float(r["malignant_raw_probability"]) for r in rows])
    shown = np.array([float(r["malignant_probability"]) for r in rows])
    y = np.array([float(r["malignant_label"]) for r in rows])
    np.testing.assert_allclose(shown, apply_output(params, raw), atol=2e-5)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, shown), abs=1e-3)
    assert m["raw"]["ece"] == pytest.approx(expected_calibration_error(y, raw), abs=1e-3)
    assert [int(r["malignant_predicted"]) for r in rows] == [int(v >= 0.5) for v in raw]  # calls unchanged


def test_evaluate_on_a_corrupt_image_names_it_and_writes_no_metrics(bundle_dir: Path, fixture_folder: Path,
                                                                    tmp_path: Path) -> None:
    victim = sorted((fixture_folder / "images").iterdir())[3]
    victim.write_bytes(b"not a nifti file at all")
    out = tmp_path / "eval"
    with pytest.raises(InputImageError, match=victim.name):
        from LungNoduleExplainLib.evaluation import evaluate_folder
        evaluate_folder(fixture_folder, bundle_dir, out, prior="reference-mask", device="cpu", n_boot=10)
    assert not (out / "metrics.json").exists()
    assert main(["--quiet", "evaluate", "--data", str(fixture_folder), "--model", str(bundle_dir), "--out",
                 str(out), "--prior", "reference-mask", "--device", "cpu"]) == 2
    assert not (out / "metrics.json").exists()


def test_evaluate_with_a_folder_of_saved_prior_maps_uses_them_and_reports_their_dice(
        bundle_dir: Path, fixture_folder: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk
    from LungNoduleExplainLib.evaluation import evaluate_folder

    maps = tmp_path / "maps"
    maps.mkdir()
    rows = list(csv.DictReader((fixture_folder / "nodules.csv").open()))
    for row in rows:  # the reference masks as float probability maps: Dice must be exactly 1
        mask = sitk.ReadImage(str(fixture_folder / row["mask"]))
        sitk.WriteImage(sitk.Cast(mask > 0, sitk.sitkFloat32), str(maps / f"{row['case_id']}.nii.gz"))
    with_maps = evaluate_folder(fixture_folder, bundle_dir, tmp_path / "maps_eval", prior=str(maps), device="cpu",
                                n_boot=20)
    with_masks = evaluate_folder(fixture_folder, bundle_dir, tmp_path / "mask_eval", prior="reference-mask",
                                 device="cpu", n_boot=20)
    assert with_maps["prior"] == str(maps) and with_maps["segmentation_dice"]["mean"] == pytest.approx(1.0)
    assert with_maps["outputs"]["malignant"]["auc"] == pytest.approx(with_masks["outputs"]["malignant"]["auc"])
    (maps / f"{rows[2]['case_id']}.nii.gz").unlink()
    out = tmp_path / "partial"
    with pytest.raises(DatasetError, match=rows[2]["case_id"]):
        evaluate_folder(fixture_folder, bundle_dir, out, prior=str(maps), device="cpu", n_boot=20)
    assert not out.exists()
    with pytest.raises(ConfigError, match="folder of probability maps"):
        evaluate_folder(fixture_folder, bundle_dir, out, prior=str(tmp_path / "nowhere"), device="cpu")


def test_metrics_bootstrap_ci_resamples_patients() -> None:
    from LungNoduleExplainLib.metrics import auc_with_ci, threshold_metrics
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50).astype(float)
    score = y + rng.normal(0, 0.8, 100)
    groups = [f"p{i // 2}" for i in range(100)]
    r = auc_with_ci(y, score, groups, n_boot=200)
    assert r["n_patients"] == 50 and r["ci_low"] < r["auc"] < r["ci_high"]
    t = threshold_metrics(np.array([1, 1, 0, 0, np.nan]), np.array([0.9, 0.2, 0.6, 0.1, 0.9]), 0.5)
    assert (t["tp"], t["fn"], t["fp"], t["tn"]) == (1, 1, 1, 1) and t["accuracy"] == 0.5


def test_a_nifti_cut_short_is_refused_naming_it_and_no_metrics_are_written(bundle_dir: Path, fixture_folder: Path,
                                                                          tmp_path: Path) -> None:
    """ITK reads a truncated .nii.gz without a word (the missing voxels as 0 HU); the evaluation must not."""
    from LungNoduleExplainLib.evaluation import evaluate_folder
    victim = sorted((fixture_folder / "images").iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    out = tmp_path / "eval"
    with pytest.raises(InputImageError, match=f"{victim.name}.*(ends early|cut short)"):
        evaluate_folder(fixture_folder, bundle_dir, out, prior="reference-mask", device="cpu", n_boot=10)
    assert not (out / "metrics.json").exists()


def test_a_mask_off_its_image_grid_or_missing_is_refused_naming_the_mask(bundle_dir: Path, fixture_folder: Path,
                                                                        tmp_path: Path) -> None:
    import SimpleITK as sitk
    from LungNoduleExplainLib.evaluation import evaluate_folder
    rows = list(csv.DictReader((fixture_folder / "nodules.csv").open()))
    mask_path = fixture_folder / rows[1]["mask"]
    mask = sitk.ReadImage(str(mask_path))
    mask.SetOrigin([v + 15.0 for v in mask.GetOrigin()])  # same size, 15 mm away: voxel-wise it would pass
    sitk.WriteImage(mask, str(mask_path))
    with pytest.raises(DatasetError, match=f"mask of case {rows[1]['case_id']}.*not on the grid of its image"):
        evaluate_folder(fixture_folder, bundle_dir, tmp_path / "eval", prior="reference-mask", device="cpu", n_boot=10)
    mask_path.unlink()  # a mask the table names but that is not there: an error even where masks are optional
    from LungNoduleExplainLib.data.voi_table import read_voi_table
    with pytest.raises(DatasetError, match=f"mask file .*{mask_path.name} not found"):
        read_voi_table(fixture_folder, require_masks=False)


def test_metrics_json_is_strict_json_with_null_for_an_output_of_one_class(bundle_dir: Path, fixture_folder: Path,
                                                                         tmp_path: Path) -> None:
    table = fixture_folder / "nodules.csv"
    text = table.read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    for row in rows:
        row["texture"] = "5"  # every nodule solid: non_solid has one class
    with table.open("w", newline="", encoding="utf-8-sig") as fh:  # with a byte-order mark, as spreadsheets save
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "eval"
    assert main(["--quiet", "evaluate", "--data", str(fixture_folder), "--model", str(bundle_dir), "--out", str(out),
                 "--bootstrap", "20", "--prior", "reference-mask", "--device", "cpu"]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["outputs"]["non_solid"]["auc"] is None and metrics["outputs"]["non_solid"]["n_positive"] == 0
    assert 0.0 <= metrics["outputs"]["malignant"]["auc"] <= 1.0


def test_f1_is_zero_when_positives_exist_and_none_is_found() -> None:
    from LungNoduleExplainLib.metrics import threshold_metrics
    t = threshold_metrics(np.array([1, 1, 0, 0, 0]), np.array([0.1, 0.2, 0.3, 0.9, 0.4]), 0.5)
    assert t["sensitivity"] == 0.0 and t["f1"] == 0.0
    t = threshold_metrics(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)
    assert np.isnan(t["f1"]) and np.isnan(t["sensitivity"])  # no positive at all: undefined


def test_a_file_the_manifest_does_not_list_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "segmentation" / "fold_5").mkdir(parents=True)
    (bundle_dir / "segmentation" / "fold_5" / "checkpoint_final.pth").write_bytes(b"unverified")
    with pytest.raises(BundleError, match="fold_5/checkpoint_final.pth.*not listed"):
        load_bundle(bundle_dir)
    (bundle_dir / "segmentation" / "fold_5" / "checkpoint_final.pth").unlink()
    (bundle_dir / "MODEL_CARD.md").write_text("read by people\n")
    (bundle_dir / ".DS_Store").write_bytes(b"")
    load_bundle(bundle_dir)
