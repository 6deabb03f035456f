"""The training cascade: loss weights, masked loss, exact resume, and a short real run whose loss falls."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from LungNoduleExplainLib.data.patches import PatchDataset, PatchSet, augment
from LungNoduleExplainLib.descriptors import nodule_descriptors
from LungNoduleExplainLib.networks import NetworkConfig
from LungNoduleExplainLib.training import (CHECKPOINT_NAME, TrainConfig, Trainer, TrainResult, masked_bce,
                                           positive_weights, selection_metric, task_weights_from_auc)

TINY = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))
NAMES = ["malignant", "a", "b"]


def synthetic_patches(n: int = 12, seed: int = 0) -> PatchSet:
    """Small random patches whose labels depend on the prior's size (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    shape = (16, 32, 32)
    priors = np.zeros((n, *shape), np.float16)
    labels = np.zeros((n, 3), np.float32)
    for i in range(n):
        r = 2 + (i % 4) * 2
        priors[i, 8 - r // 2:8 + r // 2, 16 - r:16 + r, 16 - r:16 + r] = 1
        labels[i] = [i % 4 >= 2, i % 2, (i // 2) % 2]
    labels[0, 1] = np.nan  # a left-out label
    images = (rng.random((n, 2, *shape)) * 0.2 + priors[:, None] * 0.7).astype(np.float16)
    hu = images[:, 1].astype(np.float32) * 2000.0 - 1000.0
    descriptors = np.stack([nodule_descriptors(h, p.astype(np.float32), (0.7, 0.7, 1.25)) for h, p in zip(hu, priors)])
    return PatchSet(images, priors, labels, [f"c{i}" for i in range(n)], [f"p{i // 2}" for i in range(n)],
                    np.linspace(4, 30, n).astype(np.float32), descriptors, ("percentile", "hu-window"))


def test_task_weights_are_inverse_validation_aucs_with_chance_as_the_floor() -> None:
    assert task_weights_from_auc([0.8, 0.5, 0.4, math.nan]) == pytest.approx([1.25, 2.0, 2.0, 2.0])


def test_selection_metric_is_diagnosis_auc_plus_mean_manifestation_auc() -> None:
    assert selection_metric([0.9, 0.8, 0.6], multitask=True) == pytest.approx(1.6)
    assert selection_metric([0.9, math.nan, 0.6], multitask=True) == pytest.approx(1.5)
    assert selection_metric([0.9, 0.8, 0.6], multitask=False) == pytest.approx(0.9)


def test_masked_bce_ignores_left_out_labels_and_positive_weights_balance_classes() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    loss = masked_bce(logits, labels, torch.ones(2))
    expected_second = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(3.0), torch.tensor(1.0))
    assert torch.isfinite(loss).all() and loss[1] == pytest.approx(float(expected_second))
    weights = positive_weights(np.array([[1, 0], [0, 0], [0, np.nan], [0, 1]], dtype=float))
    assert weights.tolist() == pytest.approx([3.0, 2.0])


def test_the_loss_fits_the_readers_share_where_there_is_one_and_metrics_keep_the_labels() -> None:
    patches = synthetic_patches()
    assert patches.targets is patches.labels  # no readers' shares: the targets are the labels
    targets = patches.labels.copy()
    targets[1, 0] = 2 / 3  # e.g. readers 4;5;3;2, mode 2
    soft = PatchSet(*(getattr(patches, f) for f in ("images", "priors", "labels", "case_ids", "patient_ids",
                                                     "diameters_mm", "descriptors", "channels")), targets=targets)
    part = soft.subset([0, 1])
    assert part.labels[1, 0] == 0 and part.targets[1, 0] == pytest.approx(2 / 3)
    assert PatchDataset(part, inputs=("percentile",))[1][3][0].item() == pytest.approx(2 / 3)  # the loss sees the share
    # a share t counts as t of a positive and 1 - t of a negative in the class balance
    assert positive_weights(np.array([[2 / 3], [0.0], [1.0], [np.nan]])).tolist() == pytest.approx([0.8])


def test_augmentation_keeps_shape_and_applies_the_same_spatial_transform_to_the_prior() -> None:
    rng = np.random.default_rng(3)
    volume = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    image = np.stack([volume, volume])
    for _ in range(10):
        a, p = augment(image, volume.copy(), rng, ("percentile-voi", "hu-window"))
        assert a.shape == image.shape and p.shape == volume.shape
        # gamma changes intensities monotonically, never positions: in the prior's voxel order the image never
        # decreases (float32 rounding of the power may tie neighbours, so ranks are not compared exactly)
        in_prior_order = a[0].ravel()[np.argsort(p, axis=None, kind="stable")]
        assert np.all(np.diff(in_prior_order) >= 0)
        assert np.array_equal(a[1], p)  # the HU-window channel gets no gamma


def _trainer(out: Path, epochs: int, network: NetworkConfig = TINY) -> Trainer:
    config = TrainConfig(network=network, max_epochs=epochs, phase1_epochs=1, batch_size=4, seed=3, threads=1)
    data = synthetic_patches()
    return Trainer(config, data.subset(range(8)), data.subset(range(8, 12)), out, 2, NAMES, device="cpu",
                   show_progress_bar=False)


class _KeepEveryCheckpoint(Trainer):
    """Keeps a copy of each epoch's checkpoint, so that a resume can start from any point of the run."""

    def save_checkpoint(self) -> None:
        super().save_checkpoint()
        shutil.copy(self.checkpoint_path, self.out_dir / f"epoch{self.state['epoch']}.pt")


def _plateau_trainer(out: Path, network: NetworkConfig, cls: type[Trainer] = Trainer) -> Trainer:
    """Plateau patience 1 and a high rate: the tiny validation metric stalls often, so within 10 epochs the rate
    drops several times while an early best epoch stays the best."""
    config = TrainConfig(network=network, max_epochs=10, phase1_epochs=2, batch_size=4, lr=0.05, seed=2, threads=1,
                         plateau_patience=1, early_stop_patience=20)
    data = synthetic_patches(16)
    return cls(config, data.subset(range(10)), data.subset(range(10, 16)), out, 2, NAMES, device="cpu",
               show_progress_bar=False)


@pytest.fixture(scope="module", params=[TINY, NetworkConfig("hesam-mt-aag", (2, 4, 4, 8), descriptors=True)],
                ids=["image-and-prior", "with-descriptors"])
def plateau_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[NetworkConfig, TrainResult, Path]:
    """An uninterrupted run (shared by the tests below), with the folder holding its per-epoch checkpoints."""
    out = tmp_path_factory.mktemp("straight")
    return request.param, _plateau_trainer(out, request.param, _KeepEveryCheckpoint).run(), out


def _plateau_rates(history: list[dict], lr: float, patience: int) -> list[float]:
    """The rate each epoch should train with, worked out from the validation metric: ReduceLROnPlateau's rule (mode
    max, relative threshold 1e-4, factor 0.1), stepped after each phase-2 epoch, applies from the next epoch on."""
    best, bad, rates = -math.inf, 0, []
    for h in history:
        rates.append(lr)
        if h["phase"] == 2:
            if h["val_metric"] > best * (1 + 1e-4):
                best, bad = h["val_metric"], 0
            else:
                bad += 1
            if bad > patience:
                lr, bad = lr * 0.1, 0
    return rates


def test_the_history_records_the_rate_each_epoch_trained_with(
        plateau_run: tuple[NetworkConfig, TrainResult, Path]) -> None:
    _, result, _ = plateau_run
    rates = [h["lr"] for h in result.history]
    expected = _plateau_rates(result.history, 0.05, 1)
    trigger = next((e for e in range(len(expected) - 1) if expected[e + 1] < expected[e]), None)
    assert trigger is not None, "the rate never drops in this run"
    # the epoch whose stalled metric lowered the rate still trained with the old one; the next one has the new one
    assert rates[trigger] == pytest.approx(0.05) and rates[trigger + 1] == pytest.approx(0.005), (trigger, rates)
    assert rates == pytest.approx(expected)


def test_resume_continues_exactly_as_an_uninterrupted_run(plateau_run: tuple[NetworkConfig, TrainResult, Path],
                                                          tmp_path: Path) -> None:
    network, straight, checkpoints = plateau_run
    history, rates = straight.history, [h["lr"] for h in straight.history]
    # Interrupt where the restored state decides what follows: the rate has dropped already (optimizer rate), the
    # first resumed epoch triggers a drop (scheduler's bad-epoch count: a fresh scheduler cannot drop there) and the
    # best epoch is before the interruption and never beaten after it (best metric, best epoch, best model).
    stops = [s for s in range(len(history) - 2)
             if rates[s] < rates[0] and rates[s + 2] < rates[s + 1] and 0 <= straight.best_epoch <= s]
    assert stops, f"the run no longer exercises the restored state: rates {rates}, best epoch {straight.best_epoch}"
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(checkpoints / f"epoch{stops[0]}.pt", resumed_dir / CHECKPOINT_NAME)  # as if it crashed there
    resumed = _plateau_trainer(resumed_dir, network).run(resume=True)

    for key in ("train_loss", "lr", "val_metric"):
        assert [h[key] for h in resumed.history] == pytest.approx([h[key] for h in history]), key
    assert (resumed.best_epoch, resumed.task_weights) == (straight.best_epoch, straight.task_weights)
    assert resumed.best_metric == pytest.approx(straight.best_metric)
    last_straight = torch.load(checkpoints / f"epoch{len(history) - 1}.pt", weights_only=True)["model"]
    last_resumed = torch.load(resumed_dir / CHECKPOINT_NAME, weights_only=True)["model"]
    for which, a, b in (("last", last_straight, last_resumed),
                        ("selected", straight.model.state_dict(), resumed.model.state_dict())):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6), (which, name)
    np.testing.assert_allclose(resumed.val_probs, straight.val_probs, atol=1e-6)
    assert (resumed_dir / "history.csv").read_text().count("\n") == len(history) + 1
    assert (resumed_dir / "curves.png").stat().st_size > 0


def test_phase_two_weighs_each_manifestation_loss_by_one_over_its_auc_at_the_end_of_phase_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import LungNoduleExplainLib.training as training

    per_task: dict[int, list[torch.Tensor]] = {}  # epoch -> the per-output BCE of each of its batches

    class Recording(Trainer):
        def _train_epoch(self, epoch: int, phase: int) -> float:
            per_task[epoch] = []
            return super()._train_epoch(epoch, phase)

    def recording_bce(*args: torch.Tensor) -> torch.Tensor:
        loss = masked_bce(*args)
        per_task[max(per_task)].append(loss.detach().clone())
        return loss

    monkeypatch.setattr(training, "masked_bce", recording_bce)
    config = TrainConfig(network=TINY, max_epochs=3, phase1_epochs=2, batch_size=4, lr=0.05, seed=2, threads=1)
    data = synthetic_patches(16)
    result = Recording(config, data.subset(range(10)), data.subset(range(10, 16)), tmp_path, 2, NAMES,
                       device="cpu", show_progress_bar=False).run()
    aucs = [result.history[1][f"val_auc_{name}"] for name in NAMES[1:]]  # validation AUCs of phase 1's last epoch
    assert all(0.5 < a <= 1 for a in aucs) and min(aucs) < 1, aucs  # 1/AUC neither floored nor all 1 here
    weights = [1.0] + [1 / a for a in aucs]
    assert result.task_weights == pytest.approx(weights)

    def epoch_loss(epoch: int, w: list[float]) -> float:  # what the trainer logs: the mean weighted batch loss
        return float(np.mean([float((torch.tensor(w) * loss).sum()) for loss in per_task[epoch]]))

    assert result.history[2]["phase"] == 2
    assert result.history[2]["train_loss"] == pytest.approx(epoch_loss(2, weights), rel=1e-5)
    assert result.history[2]["train_loss"] != pytest.approx(epoch_loss(2, [1.0, 1.0, 1.0]), rel=1e-3)
    # phase 1: the diagnosis loss is off and the manifestations are not weighted yet
    assert result.history[0]["train_loss"] == pytest.approx(epoch_loss(0, [0.0, 1.0, 1.0]), rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path) -> None:
    from LungNoduleExplainLib.errors import ConfigError
    _trainer(tmp_path, 2).run()
    other = _trainer(tmp_path, 5)
    other.config.lr = 0.5
    with pytest.raises(ConfigError, match="different training config"):
        other.run(resume=True)


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tmp_path: Path) -> None:
    first = _trainer(tmp_path, 12)
    first.config.early_stop_patience = 1
    result = first.run()
    assert len(result.history) < 12  # stopped early (the validation AUCs reach 1.0 within 7 epochs)
    again = _trainer(tmp_path, 12)
    again.config.early_stop_patience = 1
    resumed = again.run(resume=True)
    assert len(resumed.history) == len(result.history) and resumed.best_epoch == result.best_epoch


def test_descriptor_standardisation_comes_from_the_training_set_and_travels_in_the_weights(tmp_path: Path) -> None:
    network = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8), descriptors=True)
    trainer = _trainer(tmp_path, 2, network)
    train = trainer.train_set.descriptors[:, :network.n_descriptors].astype(np.float64)  # the set's columns
    state = trainer.model.state_dict()
    assert np.allclose(state["descriptor_mean"].numpy(), train.mean(0), atol=1e-4)
    std = train.std(0, ddof=1)
    assert np.allclose(state["descriptor_std"].numpy(), np.where(std > 1e-6, std, 1.0), rtol=1e-4)


def test_phase_one_leaves_the_diagnosis_head_untouched(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 2)
    before = {k: v.clone() for k, v in trainer.model.diagnosis_head.state_dict().items()}
    trainer.config.max_epochs = 1  # phase 1 only
    trainer.run()
    after = trainer.model.diagnosis_head.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)


def test_a_short_real_training_run_lowers_the_loss(voi_dir: Path, tmp_path: Path) -> None:
    from LungNoduleExplainLib.data.patches import build_patch_set
    from LungNoduleExplainLib.data.voi_table import read_voi_table
    from LungNoduleExplainLib.tasks import load_task_set

    task_set = load_task_set("lidc")
    records = read_voi_table(voi_dir, task_set)[:30]
    network = NetworkConfig("hesam-mt-aag", (4, 8, 8, 16), inputs=("percentile", "hu-window"))
    patches = build_patch_set(records, task_set, channels=network.inputs)
    config = TrainConfig(network=network, max_epochs=6, phase1_epochs=0,
                         batch_size=6, lr=0.01, seed=0, threads=2)
    result = Trainer(config, patches.subset(range(24)), patches.subset(range(24, 30)), tmp_path, 7,
                     task_set.names, device="cpu", show_progress_bar=False).run()
    losses = [h["train_loss"] for h in result.history]
    assert np.mean(losses[-2:]) < losses[0], losses


def test_an_ensemble_averages_its_members_probabilities_and_maps() -> None:
    from LungNoduleExplainLib.networks import Ensemble, build_network

    torch.manual_seed(0)
    members = [build_network(TINY, 2).eval() for _ in range(3)]
    ensemble = Ensemble(members).eval()
    image, prior = torch.rand(2, 1, 16, 32, 32), torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        logits, maps = ensemble.activation_maps(image, prior)
        expected = torch.stack([torch.sigmoid(m(image, prior)) for m in members]).mean(0)
        torch.testing.assert_close(torch.sigmoid(ensemble(image, prior)), expected)
        torch.testing.assert_close(torch.sigmoid(logits), expected)
        torch.testing.assert_close(maps, torch.stack([m.activation_maps(image, prior)[1] for m in members]).mean(0))
    assert maps.shape == (2, 3, 16, 32, 32) and 0.0 <= maps.min() and maps.max() <= 1.0


def _first_rows(voi_dir: Path, folder: Path, n: int) -> tuple[Path, list[dict]]:
    """A lidc-voi-format folder holding the first n rows of voi_dir's table (images and masks linked)."""
    rows = list(csv.DictReader((voi_dir / "nodules.csv").open()))[:n]
    folder.mkdir()
    with (folder / "nodules.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for sub in ("images", "masks"):
        (folder / sub).symlink_to(voi_dir / sub)
    return folder, rows


def test_an_ensemble_run_keeps_the_validation_patients_out_of_every_member_and_resumes(voi_dir: Path,
                                                                                      tmp_path: Path) -> None:
    import json

    from LungNoduleExplainLib.bundle import load_bundle
    from LungNoduleExplainLib.networks import Ensemble
    from LungNoduleExplainLib.runs import RunSpec, train_run

    folder, rows = _first_rows(voi_dir, tmp_path / "voi", 40)
    config = TrainConfig(network=NetworkConfig("hesam-mt-aag", (2, 4, 4, 8), descriptors=True), max_epochs=2,
                         phase1_epochs=1, batch_size=6, seed=0, threads=2)
    spec = RunSpec(folder, tmp_path / "run", val_fraction=0.25, device="cpu", members=2)
    bundle_dir = train_run(spec, config, show_progress_bar=False)

    bundle = load_bundle(bundle_dir)
    assert bundle.members == 2 and isinstance(bundle.model, Ensemble)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    train_patients, val_patients = set(split["train_patients"]), set(split["val_patients"])
    selection = []
    for k in range(2):  # each member trained and chose its epoch on training patients only, on disjoint parts
        member = json.loads((tmp_path / "run" / f"member{k}" / "split.json").read_text())
        assert set(member["train_patients"]) | set(member["selection_patients"]) == train_patients
        assert not set(member["train_patients"]) & set(member["selection_patients"])
        selection.append(set(member["selection_patients"]))
        assert len((tmp_path / "run" / f"member{k}" / "history.csv").read_text().splitlines()) == 3  # 2 epochs
    assert not selection[0] & selection[1] and selection[0] | selection[1] == train_patients
    assert not train_patients & val_patients
    training = bundle.manifest["training"]
    assert training["members"] == 2 and len(training["best_epoch"]) == 2
    oof = json.loads((tmp_path / "run" / "members_oof_metrics.json").read_text())
    assert {n: oof[n]["threshold"] for n in bundle.output_names} == bundle.thresholds  # not chosen on validation
    assert len(training["members_validation_auc"]["malignant"]) == 2

    before = (bundle_dir / "classifier.safetensors").read_bytes()
    train_run(spec, config, resume=True, show_progress_bar=False)  # finished members load, nothing retrains
    assert (bundle_dir / "classifier.safetensors").read_bytes() == before
    assert len((tmp_path / "run" / "member1" / "history.csv").read_text().splitlines()) == 3


def test_an_ensemble_run_without_validation_patients_trains_on_every_patient_and_reports_out_of_fold(
        voi_dir: Path, tmp_path: Path) -> None:
    import json

    from LungNoduleExplainLib.bundle import load_bundle
    from LungNoduleExplainLib.errors import ConfigError
    from LungNoduleExplainLib.runs import RunSpec, train_run

    with pytest.raises(ConfigError, match="members >= 2"):
        RunSpec(voi_dir, tmp_path / "one", val_fraction=0.0, members=1)
    folder, rows = _first_rows(voi_dir, tmp_path / "voi", 30)
    config = TrainConfig(network=NetworkConfig("hesam-mt-aag", (2, 4, 4, 8), descriptors=True), max_epochs=2,
                         phase1_epochs=1, batch_size=6, seed=0, threads=2)
    bundle = load_bundle(train_run(RunSpec(folder, tmp_path / "run", val_fraction=0.0, device="cpu", members=2),
                                   config, show_progress_bar=False))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["val_patients"] == [] and set(split["train_patients"]) == {r["patient_id"] for r in rows}
    selection = [set(json.loads((tmp_path / "run" / f"member{k}" / "split.json").read_text())["selection_patients"])
                 for k in range(2)]
    assert selection[0] | selection[1] == set(split["train_patients"]) and not selection[0] & selection[1]
    # the bundle's figures are the members' pooled out-of-fold ones, named as such; nothing claims validation
    assert set(bundle.manifest["metrics"]) == {"out_of_fold"}
    oof = json.loads((tmp_path / "run" / "members_oof_metrics.json").read_text())
    assert bundle.manifest["metrics"]["out_of_fold"]["malignant"]["n"] == oof["malignant"]["n"] > 0
    assert not (tmp_path / "run" / "validation_metrics.json").exists()
    assert bundle.manifest["training"]["n_val"] == 0
    # 30 nodules leave an output without positives: no calibrator can be fitted, and the bundle says so
    # (the fitted case: test_calibration.py::test_an_ensemble_run_stores_the_calibrator_of_its_out_of_fold_predictions)
    assert not bundle.calibrated and bundle.manifest["training"]["calibration"].startswith("none")


def test_a_run_leaves_its_excluded_patients_out_of_training_and_validation(voi_dir: Path, tmp_path: Path) -> None:
    import json

    from LungNoduleExplainLib.bundle import load_bundle
    from LungNoduleExplainLib.runs import RunSpec, train_run

    folder, rows = _first_rows(voi_dir, tmp_path / "voi", 16)
    patients = sorted({r["patient_id"] for r in rows})
    excluded = patients[:3]  # e.g. a cross-validation's test fold
    config = TrainConfig(network=TINY, max_epochs=1, phase1_epochs=0, batch_size=6, seed=0, threads=2)
    spec = RunSpec(folder, tmp_path / "run", val_fraction=0.1, device="cpu", exclude_patients=excluded)
    bundle = load_bundle(train_run(spec, config, show_progress_bar=False))

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["excluded_patients"] == excluded
    assert set(split["train_patients"]) | set(split["val_patients"]) == set(patients) - set(excluded)
    training = bundle.manifest["training"]
    assert training["n_train"] + training["n_val"] == sum(r["patient_id"] not in excluded for r in rows)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["spec"]
    assert saved["exclude_patients"] == excluded  # so --resume refuses another exclusion


def test_a_run_refuses_to_exclude_a_patient_its_table_does_not_have(voi_dir: Path, tmp_path: Path) -> None:
    from LungNoduleExplainLib.errors import ConfigError
    from LungNoduleExplainLib.runs import RunSpec, train_run

    # an empty exclusion is not written: a run begun before the field existed still resumes
    assert "exclude_patients" not in RunSpec(voi_dir, tmp_path / "run").to_dict()
    spec = RunSpec(voi_dir, tmp_path / "run", device="cpu", exclude_patients=("LIDC-IDRI-9999",))
    with pytest.raises(ConfigError, match="LIDC-IDRI-9999"):  # a misspelt test patient would otherwise train
        train_run(spec, TrainConfig(network=TINY, max_epochs=1, phase1_epochs=0), show_progress_bar=False)
