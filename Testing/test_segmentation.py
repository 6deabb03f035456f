"""nnU-Net v2 nodule segmentation: export, a CI-sized training run, prediction geometry, bad input, Dice.

The end-to-end fixture trains one fold on 5 real VOIs for 2 iterations (CPU); tests check mechanics and
geometry, not segmentation quality (that is benchmarks/segmentation/results.md).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungNoduleExplainLib.data.voi_table import read_voi_table
from LungNoduleExplainLib.errors import BundleError, ConfigError, DatasetError, InputImageError, PointError
from LungNoduleExplainLib.segmentation import NoduleSegmenter, bootstrap_mean_ci, dice, export_nnunet_dataset
from LungNoduleExplainLib.segmentation import segmentation_dice
from LungNoduleExplainLib.segmentation.export import pad_voxels
from LungNoduleExplainLib.segmentation.predict import (crop_around, paste_crop, recentred_crop_centre,
                                                      select_component)
from LungNoduleExplainLib.volume import read_ct, lps_to_ras


def _subset(voi_dir: Path, folder: Path, n_patients: int, extra_same_patient: bool) -> Path:
    """A lidc-voi folder of `n_patients` patients' first nodules (+ one more nodule of a patient that has two)."""
    rows = list(csv.DictReader((voi_dir / "nodules.csv").open(newline="")))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["patient_id"]] = counts.get(row["patient_id"], 0) + 1
    chosen, seen = [], set()
    if extra_same_patient:
        twice = next(p for p, c in counts.items() if c >= 2)
        chosen += [r for r in rows if r["patient_id"] == twice][:2]
        seen.add(twice)
    for row in rows:
        if len(seen) >= n_patients:
            break
        if row["patient_id"] not in seen:
            seen.add(row["patient_id"])
            chosen.append(row)
    folder.mkdir(parents=True)
    with (folder / "nodules.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in chosen:
            writer.writerow({**row, "image": str(voi_dir / row["image"]), "mask": str(voi_dir / row["mask"])})
    return folder


@pytest.fixture(scope="session")
def small_voi(voi_dir, tmp_path_factory) -> Path:
    return _subset(voi_dir, tmp_path_factory.mktemp("voi") / "voi", n_patients=5, extra_same_patient=True)


@pytest.fixture(scope="session")
def trained(small_voi, tmp_path_factory):
    """One fold trained for 2 iterations through the whole pipeline; returns (model_dir, oof_dir, result)."""
    from LungNoduleExplainLib.segmentation.training import SegmentationTrainingConfig, cross_validate

    root = tmp_path_factory.mktemp("seg")
    config = SegmentationTrainingConfig(folds=(0,), epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1,
                                        num_processes=1, check_integrity=False)
    result = cross_validate(small_voi, root / "work", root / "model", config, oof_dir=root / "oof")
    return result


@pytest.fixture(scope="session")
def segmenter(trained) -> NoduleSegmenter:
    return NoduleSegmenter(trained.model_dir, device="cpu")


def test_export_writes_nnunet_raw_layout_with_air_padding_and_patient_grouped_folds(small_voi, tmp_path):
    exported = export_nnunet_dataset(small_voi, tmp_path, dataset_id=777, pad_mm=(10.0, 10.0, 12.0))
    folder = tmp_path / "Dataset777_LungNodule"
    assert exported.folder == folder
    records = {r.case_id: r for r in read_voi_table(small_voi)}
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "nodule": 1} and dataset["numTraining"] == len(records)
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 5
    fold_of_patient: dict[str, int] = {}
    for k, split in enumerate(splits):
        assert not set(split["train"]) & set(split["val"])
        for case in split["val"]:
            assert fold_of_patient.setdefault(records[case].patient_id, k) == k
    assert sorted(c for s in splits for c in s["val"]) == sorted(records)
    case, record = next(iter(records.items()))
    image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
    original = sitk.ReadImage(str(record.image_path))
    lower, upper = pad_voxels(original.GetSpacing(), original.GetSize(), (10.0, 10.0, 12.0),
                              dataset["lungnodule_explain"]["min_size_mm"])
    assert image.GetSize() == tuple(s + lo + up for s, lo, up in zip(original.GetSize(), lower, upper))
    assert min(lower) >= 1 and lower[2] * original.GetSpacing()[2] >= 12.0 - 1e-6
    array = sitk.GetArrayFromImage(image)
    assert (array[0] == -1000).all() and (array[:, :, -1] == -1000).all()
    back = sitk.Resample(image, original, sitk.Transform(), sitk.sitkNearestNeighbor, -2000)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(record.mask_path)))
    assert int(sitk.GetArrayFromImage(label).sum()) == int((mask > 0).sum())


def test_export_refuses_an_existing_dataset_and_leaves_nothing_half_written(small_voi, tmp_path):
    export_nnunet_dataset(small_voi, tmp_path / "raw", dataset_id=778)
    with pytest.raises(DatasetError, match="exists already"):
        export_nnunet_dataset(small_voi, tmp_path / "raw", dataset_id=778)
    broken = tmp_path / "broken"
    shutil.copytree(small_voi, broken)
    rows = list(csv.DictReader((broken / "nodules.csv").open(newline="")))
    small_mask = sitk.Image([3, 3, 3], sitk.sitkUInt8)
    sitk.WriteImage(small_mask, str(broken / "bad_mask.nii.gz"))
    rows[-1]["mask"] = "bad_mask.nii.gz"
    with (broken / "nodules.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DatasetError, match="bad_mask.nii.gz"):
        export_nnunet_dataset(broken, tmp_path / "raw2", dataset_id=779)
    assert list((tmp_path / "raw2").iterdir()) == []


def test_cross_validation_writes_a_small_model_folder_and_oof_maps_on_each_voi_grid(trained, small_voi):
    import torch

    model = trained.model_dir
    assert (model / "plans.json").is_file() and (model / "dataset.json").is_file()
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    assert checkpoint.stat().st_size < 4 * 2**20
    assert "network_weights" in torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert not model.with_name(model.name + ".partial").exists()
    records = {r.case_id: r for r in read_voi_table(small_voi)}
    assert trained.fold_of_case and set(trained.fold_of_case.values()) == {0}
    for case in trained.fold_of_case:
        oof = sitk.ReadImage(str(trained.oof_dir / f"{case}.nii.gz"))
        voi = sitk.ReadImage(str(records[case].image_path))
        assert oof.GetPixelID() == sitk.sitkFloat32 and oof.GetSize() == voi.GetSize()
        np.testing.assert_allclose(oof.GetOrigin(), voi.GetOrigin(), atol=1e-4)
        values = sitk.GetArrayViewFromImage(oof)
        assert values.min() >= 0.0 and values.max() <= 1.0
        assert 0.0 <= trained.dice[case] <= 1.0


def test_training_continued_from_a_model_starts_from_its_weights_and_counts_all_batches(trained, small_voi):
    import torch
    from LungNoduleExplainLib.segmentation.training import SegmentationTrainingConfig, cross_validate

    root = trained.model_dir.parent
    # A vanishing learning rate: after one batch the weights must still be the starting model's, which a fresh
    # initialisation would not be.
    config = SegmentationTrainingConfig(folds=(0,), epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1,
                                        initial_lr=1e-9, num_processes=1, check_integrity=False,
                                        init_from=str(trained.model_dir))
    result = cross_validate(small_voi, root / "work", root / "continued", config, oof_dir=root / "oof_continued")
    def fold_0(model):
        return torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)

    start, continued = fold_0(trained.model_dir), fold_0(result.model_dir)
    assert continued["lungnodule_explain"]["batches"] == 2 + 1
    assert continued["lungnodule_explain"]["initialised_from"] == str(trained.model_dir)
    for key, value in start["network_weights"].items():
        torch.testing.assert_close(continued["network_weights"][key].float(), value.float(), atol=1e-3, rtol=0)
    assert set(result.fold_of_case) == set(trained.fold_of_case)


def test_continuing_from_a_model_without_the_requested_fold_is_refused_up_front(trained):
    from LungNoduleExplainLib.segmentation.training import SegmentationTrainingConfig

    with pytest.raises(ConfigError, match=r"init_from: .* folds \[1, 2\]"):
        SegmentationTrainingConfig(folds=(0, 1, 2), init_from=str(trained.model_dir))


def test_segment_returns_probability_and_mask_on_the_ct_grid_of_a_real_dicom_series(segmenter, ct_dir):
    ct = read_ct(ct_dir / "LIDC-IDRI-0001" / "dicom")
    nodule = next(n for n in json.loads((ct_dir / "nodules.json").read_text())
                  if n["patient_id"] == "LIDC-IDRI-0001")
    result = segmenter.segment(ct, nodule["centroid_lps_mm"])
    for image in (result.probability, result.mask):
        assert image.GetSize() == ct.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), ct.GetSpacing())
        np.testing.assert_allclose(image.GetOrigin(), ct.GetOrigin())
        np.testing.assert_allclose(image.GetDirection(), ct.GetDirection())
    probability = sitk.GetArrayViewFromImage(result.probability)
    mask = sitk.GetArrayViewFromImage(result.mask)
    assert result.probability.GetPixelID() == sitk.sitkFloat32 and result.mask.GetPixelID() == sitk.sitkUInt8
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1} and (probability[mask > 0] >= segmenter.threshold).all()
    assert np.allclose(result.crop.spacing, ct.GetSpacing())
    same = segmenter.segment(ct, lps_to_ras(nodule["centroid_lps_mm"]), space="ras")
    assert same.crop == result.crop


def test_a_point_outside_the_image_raises_point_error(segmenter, ct_dir):
    ct = read_ct(ct_dir / "LIDC-IDRI-0003" / "dicom")
    with pytest.raises(PointError, match="outside"):
        segmenter.segment(ct, (1e4, 0.0, 0.0))


def test_an_image_without_usable_spacing_raises_input_image_error(segmenter):
    image = sitk.GetImageFromArray(np.full((8, 16, 16), -1000, dtype=np.int16))
    image.SetSpacing((0.7, 0.7, 40.0))
    with pytest.raises(InputImageError, match="spacing"):
        segmenter.segment(image, (0, 0, 0), space="ijk")


def test_a_model_folder_missing_plans_or_a_fold_raises_bundle_error_naming_it(trained, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(trained.model_dir, broken)
    with pytest.raises(BundleError, match="fold_3"):
        NoduleSegmenter(broken, folds=(3,), device="cpu")
    (broken / "plans.json").unlink()
    with pytest.raises(BundleError, match="plans.json"):
        NoduleSegmenter(broken, device="cpu")
    with pytest.raises(BundleError, match="does not exist"):
        NoduleSegmenter(tmp_path / "nowhere", device="cpu")


def test_cross_validation_refuses_an_existing_output_folder_before_doing_anything(small_voi, tmp_path):
    from LungNoduleExplainLib.segmentation.training import cross_validate

    from LungNoduleExplainLib.errors import OutputExistsError

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("someone's")  # an empty folder may be used; this one may not
    with pytest.raises(OutputExistsError, match="not empty"):
        cross_validate(small_voi, tmp_path / "work", tmp_path / "model")
    with pytest.raises(OutputExistsError, match="nothing was deleted"):
        cross_validate(small_voi, tmp_path / "work", tmp_path / "model", overwrite=True)
    assert (tmp_path / "model" / "notes.txt").exists()
    assert not (tmp_path / "work").exists()


def test_segmentation_dice_scores_every_record_between_zero_and_one(segmenter, small_voi):
    records = read_voi_table(small_voi)[:2]
    scores = segmentation_dice(segmenter, records)
    assert set(scores) == {r.case_id for r in records}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_crop_pads_with_air_outside_the_ct_and_pastes_back_voxel_for_voxel():
    array = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14) - 500
    ct = sitk.GetImageFromArray(array)
    ct.SetSpacing((0.8, 0.8, 2.0))
    ct.SetOrigin((-10.0, 5.0, 100.0))
    corner = ct.TransformIndexToPhysicalPoint((0, 0, 0))
    crop, geometry, start = crop_around(ct, corner, (8.0, 8.0, 8.0))
    assert crop.shape == (4, 10, 10) and tuple(start) == (-4, -4, -2)
    assert (crop[:2] == -1000).all() and (crop[:, :4] == -1000).all() and crop[2, 4, 4] == array[0, 0, 0]
    assert np.allclose(ct.TransformPhysicalPointToIndex(geometry.origin), start)
    pasted = sitk.GetArrayFromImage(paste_crop(crop, start, ct, np.float32))
    np.testing.assert_array_equal(pasted[:2, :6, :6], array[:2, :6, :6])
    assert (pasted[2:] == 0).all() and (pasted[:, 6:] == 0).all()


def test_component_selection_keeps_the_blob_at_the_point_else_the_nearest_one():
    mask = np.zeros((10, 20, 20), dtype=bool)
    mask[2:5, 2:6, 2:6] = True
    mask[5:8, 12:18, 12:18] = True
    at_point = select_component(mask, (6, 14, 14), (1.0, 1.0, 1.0))
    assert at_point[6, 14, 14] and not at_point[3, 3, 3]
    nearest = select_component(mask, (3, 3, 8), (1.0, 1.0, 1.0))
    assert nearest[3, 3, 3] and not nearest[6, 14, 14]
    assert not select_component(np.zeros_like(mask), (0, 0, 0), (1.0, 1.0, 1.0)).any()


def test_dice_is_one_for_equal_or_empty_volumes_and_zero_for_disjoint_ones():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    b = a.copy()
    assert dice(a, b) == 1.0
    a[0, 0, :2] = 1
    b[0, 0, 1:3] = 1
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, np.roll(b, 2, axis=0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:2])


def test_bootstrap_interval_resamples_patients_and_brackets_the_mean():
    values = {"a1": 0.9, "a2": 0.8, "b1": 0.5, "c1": 0.7, "d1": 0.95}
    patients = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "d1": "D"}
    mean, low, high = bootstrap_mean_ci(values, patients, n_boot=500, seed=1)
    assert mean == pytest.approx(np.mean(list(values.values())))
    assert low < mean < high and 0.5 <= low and high <= 0.95


def test_train_segmentation_verb_parses_its_options_and_rejects_a_sixth_fold(tmp_path):
    from LungNoduleExplainLib.cli import build_parser
    from LungNoduleExplainLib.commands import train_segmentation

    parser = build_parser()
    args = parser.parse_args(["train-segmentation", "--data", "d", "--work", "w", "--out", "o", "--folds", "0", "2",
                              "--epochs", "3", "--iterations", "4", "--device", "cpu"])
    assert args.func is train_segmentation.run and args.folds == [0, 2] and args.epochs == 3
    assert args.features == [8, 64] and args.lr == 0.01 and args.init_from is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train-segmentation", "--data", "d", "--work", "w", "--out", "o", "--folds", "5"])
    wider = parser.parse_args(["train-segmentation", "--data", "d", "--work", "w", "--out", "o", "--features", "32",
                               "320", "--lr", "0.005", "--init-from", "m"])
    assert wider.features == [32, 320] and wider.lr == 0.005 and wider.init_from == Path("m")
    inverted = parser.parse_args(["train-segmentation", "--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"),
                                  "--out", str(tmp_path / "o"), "--features", "64", "8"])
    with pytest.raises(ConfigError, match="--features"):  # refused before anything is exported or trained
        train_segmentation.run(inverted)
    assert list(tmp_path.iterdir()) == []


def test_seed_point_falls_back_to_the_mask_centroid_when_the_table_centre_is_outside_the_image(small_voi):
    from LungNoduleExplainLib.segmentation.metrics import seed_point

    record = read_voi_table(small_voi)[0]
    image = sitk.ReadImage(str(record.image_path))
    mask = sitk.ReadImage(str(record.mask_path))
    assert seed_point(record, image, mask) == tuple(record.center_lps)
    far = record.__class__(**{**record.__dict__, "center_lps": (1e4, 1e4, 1e4)})
    point = seed_point(far, image, mask)
    index = np.round(image.TransformPhysicalPointToContinuousIndex(point)).astype(int)
    assert sitk.GetArrayViewFromImage(mask)[index[2], index[1], index[0]] > 0
    with pytest.raises(DatasetError, match="outside"):
        seed_point(far, image, None)


def test_the_default_crop_is_crop_mm_around_the_point_and_an_explicit_crop_is_used_as_given(segmenter, monkeypatch):
    ct = sitk.GetImageFromArray(np.full((60, 120, 120), -800, dtype=np.int16))
    ct.SetSpacing((0.7, 0.7, 1.25))
    seen = []
    monkeypatch.setattr(segmenter, "predict_array", lambda hu, spacing, locate=False: seen.append(hu.shape) or
                        np.zeros(hu.shape, dtype=np.float32))
    result = segmenter.segment(ct, (60, 60, 30), space="ijk")
    np.testing.assert_allclose(np.asarray(result.crop.size) * np.asarray(result.crop.spacing), segmenter.crop_mm,
                               atol=0.7)
    explicit = segmenter.segment(ct, (60, 60, 30), space="ijk", crop_mm=(20.0, 20.0, 20.0))
    assert explicit.crop.size == (29, 29, 16)
    assert seen == [result.crop.size[::-1], (16, 29, 29)]  # one prediction a click, of the crop's shape
    convolutions = [type(m).__name__ for m in segmenter._predictor.network.modules() if "Conv3d" in type(m).__name__]
    assert convolutions and set(convolutions) == {"OneDnnConv3d"}  # CPU: oneDNN for nnU-Net's batch of one


def test_onednn_convolutions_give_pytorchs_results_and_keep_loading_weights():
    import copy

    import torch
    from LungNoduleExplainLib.devices import use_onednn_convolutions

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.LeakyReLU(),
                                  torch.nn.Conv3d(8, 8, 3, stride=2, padding=1), torch.nn.ConvTranspose3d(8, 2, 2, 2))
    reference = copy.deepcopy(network)  # stays on PyTorch's own convolutions
    x = torch.randn(1, 1, 16, 24, 24)
    with torch.inference_mode():
        expected = network(x)
    other = {k: v + 1 for k, v in network.state_dict().items()}
    assert use_onednn_convolutions(network) == 2
    assert [type(m).__name__ for m in network] == ["OneDnnConv3d", "LeakyReLU", "OneDnnConv3d", "ConvTranspose3d"]
    with torch.inference_mode():
        torch.testing.assert_close(network(x), expected, atol=1e-4, rtol=1e-4)
    network.load_state_dict(other)  # nnU-Net loads each fold's weights into the one network
    reference.load_state_dict(other)
    with torch.inference_mode():
        torch.testing.assert_close(network(x), reference(x), atol=1e-4, rtol=1e-4)
    assert use_onednn_convolutions(network) == 0  # already switched


def test_a_crop_seen_lately_is_answered_from_memory_and_the_answer_cannot_be_changed():
    """nnU-Net is asked once per distinct crop (its exact voxels and spacing); recent_crops=0 asks every time."""
    import collections

    class CountingPredictor:
        list_of_parameters = [{}]  # one fold

        def __init__(self):
            self.calls = 0

        def predict_single_npy_array(self, data, properties, *rest):
            self.calls += 1
            probability = (data[0] > -300).astype(np.float32)
            return None, np.stack([1.0 - probability, probability])

    def segmenter_keeping(recent: int) -> NoduleSegmenter:
        segmenter = object.__new__(NoduleSegmenter)
        segmenter._predictor, segmenter._recent, segmenter._recent_crops = CountingPredictor(), \
            collections.OrderedDict(), recent
        return segmenter

    crop = np.full((8, 10, 12), -800.0, dtype=np.float32)
    crop[3:5, 4:6, 5:7] = 40.0
    other = crop.copy()
    other[0, 0, 0] = -799.0  # one voxel differs: another crop
    keeping = segmenter_keeping(2)
    first = keeping.predict_array(crop, (2.0, 0.7, 0.7))
    again = keeping.predict_array(crop.copy(), (2.0, 0.7, 0.7))
    assert keeping._predictor.calls == 1 and again is first and first.sum() == 8
    with pytest.raises(ValueError, match="read-only"):
        again[0, 0, 0] = 1.0
    keeping.predict_array(other, (2.0, 0.7, 0.7))
    keeping.predict_array(crop, (2.5, 0.7, 0.7))  # another spacing: another answer
    assert keeping._predictor.calls == 3
    keeping.predict_array(crop, (2.0, 0.7, 0.7))  # the oldest of 2 was dropped
    assert keeping._predictor.calls == 4
    forgetting = segmenter_keeping(0)
    forgetting.predict_array(crop, (2.0, 0.7, 0.7)), forgetting.predict_array(crop, (2.0, 0.7, 0.7))
    assert forgetting._predictor.calls == 2


def _threshold_segmenter(recentre: bool) -> NoduleSegmenter:
    """A NoduleSegmenter whose network is a HU threshold (translation-equivariant, no weights), to test cropping."""
    segmenter = object.__new__(NoduleSegmenter)
    segmenter.crop_mm, segmenter.threshold, segmenter.recentre = (48.0, 48.0, 40.0), 0.5, recentre
    segmenter.calls = []
    segmenter._predictor = segmenter._locator = None  # no nnU-Net: one "fold"
    segmenter.predict_array = lambda hu, spacing, locate=False: segmenter.calls.append(hu.shape) or \
        (hu > -300).astype(np.float32)
    return segmenter


def _ball_ct() -> tuple[sitk.Image, np.ndarray]:
    """Lung (-800 HU) with a 10 mm ball (40 HU) centred at voxel (60, 58, 30); 0.7 x 0.7 x 1.25 mm; its centre."""
    zz, yy, xx = np.meshgrid(np.arange(60) * 1.25, np.arange(120) * 0.7, np.arange(120) * 0.7, indexing="ij")
    ball = (xx - 60 * 0.7) ** 2 + (yy - 58 * 0.7) ** 2 + (zz - 30 * 1.25) ** 2 <= 5.0 ** 2
    ct = sitk.GetImageFromArray(np.where(ball, 40, -800).astype(np.int16))
    ct.SetSpacing((0.7, 0.7, 1.25))
    ct.SetOrigin((-20.0, 35.0, -110.0))
    return ct, np.asarray(ct.TransformContinuousIndexToPhysicalPoint((60.0, 58.0, 30.0)))


def test_the_second_pass_centres_the_crop_on_the_nodule_wherever_inside_it_the_click_lies():
    ct, centre = _ball_ct()
    moves = [np.zeros(3)] + [3.0 * v for v in np.vstack([np.eye(3), -np.eye(3)])]
    recentred = [_threshold_segmenter(True).segment(ct, centre + m) for m in moves]
    assert len({r.crop.origin for r in recentred}) == 1, "one crop, placed by the nodule, for every click"
    np.testing.assert_allclose(recentred[0].crop.origin, centre - (np.asarray(recentred[0].crop.size) - 1) / 2.0
                               * np.asarray(ct.GetSpacing()), atol=0.7)
    for r in recentred[1:]:
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(r.probability),
                                      sitk.GetArrayViewFromImage(recentred[0].probability))
    plain = [_threshold_segmenter(False).segment(ct, centre + m) for m in moves]
    assert len({r.crop.origin for r in plain}) == len(moves), "without it the crop follows the click"


def test_a_click_at_the_nodule_centre_is_segmented_once_and_a_far_reaching_structure_keeps_its_first_field():
    ct, centre = _ball_ct()
    segmenter = _threshold_segmenter(True)
    segmenter.segment(ct, centre)
    assert len(segmenter.calls) == 1, "the crop would not move: no second prediction"
    segmenter.segment(ct, centre + (3.0, 0.0, 0.0))
    assert len(segmenter.calls) == 3
    # a slab reaching 30 mm from the click: centring on it would put the click within 4 mm of the crop's edge
    slab = np.zeros((32, 68, 68), dtype=bool)
    slab[10:20, 30:38, 0:68] = True
    start = np.array([0, 0, 0])
    click = np.asarray(ct.TransformContinuousIndexToPhysicalPoint((2.0, 34.0, 15.0)))
    assert recentred_crop_centre(ct, slab, start, click, (48.0, 48.0, 40.0)) is None
    assert recentred_crop_centre(ct, np.zeros_like(slab), start, click, (48.0, 48.0, 40.0)) is None


def test_with_locating_folds_the_first_pass_only_finds_the_nodule_and_the_ensemble_always_gives_the_result():
    ct, centre = _ball_ct()
    segmenter = _threshold_segmenter(True)
    segmenter._locator = object()  # fewer folds than the ensemble
    passes = []
    segmenter.predict_array = lambda hu, spacing, locate=False: passes.append(locate) or \
        (hu > -300).astype(np.float32)
    at_centre = segmenter.segment(ct, centre)
    assert passes == [True, False], "the crop stays, yet the result is the whole ensemble's"
    moved = segmenter.segment(ct, centre + (3.0, 0.0, 0.0))
    assert passes[2:] == [True, False] and moved.crop.origin == at_centre.crop.origin
    segmenter.recentre = False
    segmenter.segment(ct, centre)
    assert passes[4:] == [False], "no re-centring: one pass, by the ensemble"
