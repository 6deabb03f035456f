"""A training run from a dataset folder to a model bundle: split by patient, cut patches, train, pick thresholds,
measure on the validation patients, write the bundle.

One network (members = 1): trained on the training patients, its epoch and thresholds chosen on the validation
patients. An ensemble (members = K): the training patients are split into K patient folds; member k trains on
the other folds and picks its epoch on fold k; the thresholds come from the members' pooled out-of-fold
predictions, and so does the calibration (calibration.json: one monotone map per output, fitted on those same
out-of-fold predictions); the validation patients are touched only to measure the finished ensemble.

Run folder layout: config.json, split.json, checkpoint.pt (every epoch), history.csv, curves.png (for an
ensemble: one memberK/ folder of these per member, its split.json naming its training and selection patients,
and members_oof_metrics.json), validation_metrics.json, bundle/ (the model bundle).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import distributed
from .atomic import write_json_atomic
from .bundle import save_bundle, sha256
from .calibration import Calibration, fit_calibration
from .data.patches import PatchSet, build_patch_set
from .data.voi_table import patient_folds, patient_split, read_voi_table
from .errors import BundleError, ConfigError
from .evaluation import output_metrics
from .metrics import safe_auc
from .output_folder import start_folder
from .progress import Progress, part
from .tasks import TaskSet, load_task_set
from .networks import Ensemble, predict
from .train_config import RunSpec
from .training import RESUMABLE_CHANGES, Trainer, TrainConfig, TrainResult
from .vocabulary import Prior

logger = logging.getLogger(__name__)


def train_run(spec: RunSpec, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
              progress: Progress | None = None, show_progress_bar: bool = True) -> Path:
    """Train a classifier as `spec` and `config` say; returns the bundle folder. The run folder must be empty,
    or one of ours to continue (`resume`) or replace (`overwrite`): output_folder's rule."""
    task_set = load_task_set(spec.tasks)
    if distributed.is_main_process():
        start_folder(spec.run_dir, "train", overwrite=overwrite, resume=resume)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    config_path = spec.run_dir / "config.json"
    run_config = {"spec": spec.to_dict(), "training": config.to_dict(), "tasks": task_set.to_dict()}
    if resume and config_path.is_file() and distributed.is_main_process():
        saved = json.loads(config_path.read_text())
        comparable = json.loads(json.dumps(run_config))
        for key in RESUMABLE_CHANGES:
            saved["training"].pop(key, None), comparable["training"].pop(key, None)
        if saved != comparable:
            raise ConfigError(f"--resume: {config_path} differs from this run's configuration")
    if distributed.is_main_process():
        write_json_atomic(config_path, run_config)
    records = read_voi_table(spec.data, task_set, require_masks=spec.prior == Prior.REFERENCE_MASK)
    records = _leave_out(records, spec.exclude_patients, spec.data)
    train_idx, val_idx = patient_split(records, spec.val_fraction, config.seed)  # fraction 0: no validation patients
    if distributed.is_main_process():
        write_json_atomic(spec.run_dir / "split.json", {
            "seed": config.seed, "val_fraction": spec.val_fraction,
            "train_patients": sorted({records[i].patient_id for i in train_idx}),
            "val_patients": sorted({records[i].patient_id for i in val_idx}),
            "excluded_patients": list(spec.exclude_patients)})

    logger.info("cutting %d patches from %s", len(records), spec.data)
    patches = build_patch_set(records, task_set, spec.prior, channels=config.network.inputs,
                              progress=part(progress, 0.0, 0.1), training_targets=True)
    train_set, val_set = patches.subset(train_idx), patches.subset(val_idx)
    logger.info("%d training nodules (%d patients), %d validation nodules (%d patients)", len(train_set),
                len(set(train_set.patient_ids)), len(val_set), len(set(val_set.patient_ids)))
    names = task_set.names
    calibration = None
    if spec.members == 1:
        result = Trainer(config, train_set, val_set, spec.run_dir, len(task_set.manifestations), names,
                         device=spec.device,
                         progress=part(progress, 0.1, 1.0),
                         show_progress_bar=show_progress_bar).run(resume=resume)
        model, names = result.model, names[:result.val_probs.shape[1]]
        metrics = output_metrics(names, result.val_probs, val_set, thresholds=None)
        thresholds = {name: metrics[name]["threshold"] for name in names}
        facts = {"validation_is_optimistic": "the epoch and the thresholds were chosen on the validation patients",
                 "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                 "seconds": round(result.seconds, 1), "task_weights": dict(zip(names, result.task_weights))}
    else:
        results, oof = _train_members(spec, config, train_set, [records[i] for i in train_idx], task_set,
                                      resume=resume, progress=progress, show_progress_bar=show_progress_bar)
        names = names[:oof.shape[1]]
        oof_metrics = output_metrics(names, oof, train_set, thresholds=None)
        thresholds = {name: oof_metrics[name]["threshold"] for name in names}
        calibration, calibrate = _fit_members_calibration(oof, train_set, names, thresholds)
        model = Ensemble([r.model for r in results])
        device, inputs = next(model.parameters()).device, config.network.inputs
        metrics, member_aucs = oof_metrics, []  # without validation patients the figures are out of fold
        if len(val_set):
            shown_thresholds = thresholds if calibration is None else Calibration.from_dict(
                calibration, names, "fitted calibration").thresholds
            metrics = output_metrics(names, calibrate(predict(model, val_set, device, inputs)), val_set,
                                     thresholds=shown_thresholds)
            # Each member alone on the validation patients: what the averaging adds, measured on the same patients.
            member_aucs = [[safe_auc(val_set.labels[:, j], p[:, j]) for j in range(len(names))]
                           for p in (predict(r.model, val_set, device, inputs) for r in results)]
        if distributed.is_main_process():
            write_json_atomic(spec.run_dir / "members_oof_metrics.json", oof_metrics)
        facts = {"members": spec.members, "member_selection": "patient folds of the training patients",
                 "best_epoch": [r.best_epoch for r in results], "epochs_run": [len(r.history) for r in results],
                 "seconds": round(sum(r.seconds for r in results), 1),
                 "task_weights": [dict(zip(names, r.task_weights)) for r in results],
                 "thresholds_from": "members' pooled out-of-fold predictions on the training patients",
                 "members_out_of_fold_auc": {n: oof_metrics[n]["auc"] for n in names},
                 "members_validation_auc": {n: [a[j] for a in member_aucs] for j, n in enumerate(names)},
                 "calibration": ("calibration.json, fitted on the members' pooled out-of-fold predictions"
                                 if calibration is not None else "none: too few labelled nodules of each class")}
    # the data by its folder's name and its table's checksum: a bundle names no path of the training machine
    table = Path(spec.data) / "nodules.csv"
    training = {"data": Path(spec.data).name, "data_table_sha256": sha256(table) if table.is_file() else None,
                "n_train": len(train_set), "n_val": len(val_set),
                "n_train_patients": len(set(train_set.patient_ids)), "n_val_patients": len(set(val_set.patient_ids)),
                "split": "by patient", "seed": config.seed, **facts, "config": config.to_dict()}
    bundle_dir = spec.run_dir / "bundle"
    if not distributed.is_main_process():
        distributed.barrier()
        return bundle_dir
    # Without validation patients the bundle's figures are the members' out-of-fold ones, and say so.
    estimate = "validation" if len(val_set) else "out_of_fold"
    write_json_atomic(spec.run_dir / f"{estimate}_metrics.json", metrics)
    prior = Prior.REFERENCE_MASK if spec.prior == Prior.REFERENCE_MASK else Prior.NNUNET_OOF
    path = save_bundle(spec.run_dir / "bundle", model, task_set, config.network, thresholds, name=spec.name,
                       prior=prior.value,
                       training=training, metrics={estimate: metrics}, calibration=calibration)
    distributed.barrier()
    return path


def _leave_out(records: list, patients: tuple[str, ...], data: Path) -> list:
    """`records` without the nodules of `patients`; ConfigError naming any patient the table does not have (a
    misspelt exclusion would otherwise leave a test patient in training)."""
    excluded = set(patients)
    unknown = sorted(excluded - {r.patient_id for r in records})
    if unknown:
        raise ConfigError(f"exclude_patients: {data} has no patient(s) {unknown[:5]}"
                          + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    kept = [r for r in records if r.patient_id not in excluded]
    if not kept:
        raise ConfigError(f"exclude_patients leaves out every patient of {data}: nothing to train on")
    return kept


def _train_members(spec: RunSpec, config: TrainConfig, train_set: PatchSet, train_records: list, task_set: TaskSet,
                   *, resume: bool, progress: Progress | None, show_progress_bar: bool
                   ) -> tuple[list[TrainResult], np.ndarray]:
    """Train spec.members networks, member k on all training patients but fold k, its epoch picked on fold k.
    Returns the results and the pooled out-of-fold probabilities [n_train, n_outputs]."""
    folds = patient_folds(train_records, spec.members, config.seed)
    results, oof = [], None
    for k, fold in enumerate(folds):
        in_fold = set(fold)
        member_dir = spec.run_dir / f"member{k}"
        if distributed.is_main_process():
            member_dir.mkdir(parents=True, exist_ok=True)
            fold_patients = {train_records[i].patient_id for i in fold}
            write_json_atomic(member_dir / "split.json", {
                "train_patients": sorted({r.patient_id for r in train_records} - fold_patients),
                "selection_patients": sorted(fold_patients)})
        logger.info("member %d of %d: %d nodules to train, %d to select on", k + 1, spec.members,
                    len(train_set) - len(fold), len(fold))
        trainer = Trainer(replace(config, seed=config.seed + k),  # members differ in initialisation too
                          train_set.subset([i for i in range(len(train_set)) if i not in in_fold]),
                          train_set.subset(fold), member_dir, len(task_set.manifestations), task_set.names,
                          device=spec.device,
                          progress=part(progress, 0.1 + 0.9 * k / spec.members, 0.1 + 0.9 * (k + 1) / spec.members,
                                        f"member {k + 1}/{spec.members}: "),
                          show_progress_bar=show_progress_bar)
        result = trainer.run(resume=resume and trainer.checkpoint_path.is_file())
        if oof is None:
            oof = np.full((len(train_set), result.val_probs.shape[1]), np.nan, dtype=np.float32)
        oof[fold] = result.val_probs
        results.append(result)
    return results, oof


def _fit_members_calibration(oof: np.ndarray, train_set: PatchSet, names: list[str], thresholds: dict[str, float]
                             ) -> tuple[dict | None, Callable[[np.ndarray], np.ndarray]]:
    """(calibration.json document, function calibrating [N, n_outputs] probabilities) from the members' pooled
    out-of-fold predictions; (None, identity) when an output has too few labelled nodules of a class to fit."""
    try:
        doc = fit_calibration(oof, train_set.labels[:, :len(names)], train_set.patient_ids, names, thresholds,
                              source=f"members' pooled out-of-fold predictions on {len(oof)} training nodules")
    except (ConfigError, BundleError, ValueError) as exc:
        logger.warning("no calibration fitted (%s); the bundle's probabilities stay raw scores", exc)
        return None, lambda probs: probs
    calibration = Calibration.from_dict(doc, names, "fitted calibration")
    return doc, lambda probs: calibration.apply_all(probs, names)


def describe_prevalence(task_set: TaskSet, patches: PatchSet) -> dict[str, tuple[int, int]]:
    labels = patches.labels
    return {n: (int(np.nansum(labels[:, k] == 1)), int(np.nansum(labels[:, k] == 0)))
            for k, n in enumerate(task_set.names)}
