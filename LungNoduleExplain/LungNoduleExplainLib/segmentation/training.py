"""Five-fold nnU-Net v2 training by patient, the packaged model folder, and out-of-fold probability maps.

Flow (each stage through nnU-Net's own API; see docs/SEGMENTATION.md):
export (export.py) -> fingerprint/plan/preprocess (plans.py) -> per fold: nnUNetTrainerLungNodule.run_training()
-> package_fold() (a weights-only checkpoint) -> NoduleSegmenter(fold k) on the fold's validation nodules
-> `<oof_dir>/<case_id>.nii.gz` (float32 in [0, 1] on the VOI's own grid) and their Dice.

The model folder is assembled under `<out>.partial` and renamed to `<out>` when every requested fold is done;
rerunning the same command resumes after the last finished fold.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path, write_json_atomic
from ..data.voi_table import read_image, read_voi_table
from ..devices import resolve_device
from ..errors import ConfigError
from ..output_folder import check_output_folder, replace_folder
from ..progress import Progress
from ..vocabulary import Device
from .export import DEFAULT_DATASET_ID, DEFAULT_NAME, DEFAULT_PAD_MM, dataset_name, export_nnunet_dataset
from .metrics import dice, seed_point
from .plans import CONFIGURATION, PLANS_NAME, SmallPlansConfig, fingerprint_and_preprocess, plan, use_work_folder
from .predict import CHECKPOINT_NAME, NoduleSegmenter, load_weights_checkpoint

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class SegmentationTrainingConfig:
    """How to train. epochs x iterations_per_epoch batches per fold; device: a vocabulary.Device name."""

    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 20
    iterations_per_epoch: int = 50
    val_iterations_per_epoch: int = 5
    initial_lr: float = 1e-2
    device: str = Device.CPU.value
    dataset_id: int = DEFAULT_DATASET_ID
    pad_mm: tuple[float, float, float] = DEFAULT_PAD_MM
    plans: SmallPlansConfig = field(default_factory=SmallPlansConfig)
    num_processes: int = 2
    check_integrity: bool = True
    weights_float16: bool = True
    torch_threads: int | None = None  # CPU threads for torch; 1 is fastest on a crowded machine
    # A model folder (same plans) whose fold k initialises fold k: training continues from it on the same fold's
    # patients, so the out-of-fold maps stay out of fold.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if not self.folds or any(not 0 <= f < 5 for f in self.folds) or len(set(self.folds)) != len(self.folds):
            raise ConfigError(f"folds must be distinct values in 0..4, got {self.folds}")
        if self.epochs < 1 or self.iterations_per_epoch < 1 or self.val_iterations_per_epoch < 1:
            raise ConfigError(f"epochs ({self.epochs}) and iterations ({self.iterations_per_epoch}, "
                              f"{self.val_iterations_per_epoch}) must be >= 1")
        if self.device not in Device.names():
            raise ConfigError(f"device must be one of {Device.names()}, got {self.device!r}")
        if self.init_from is not None:
            missing = [k for k in self.folds if not (Path(self.init_from) / f"fold_{k}" / CHECKPOINT_NAME).is_file()]
            if missing:
                raise ConfigError(f"init_from: {self.init_from} has no fold_<k>/{CHECKPOINT_NAME} for folds {missing}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CrossValidationResult:
    """Per-case Dice of the out-of-fold predictions, the fold and patient of each case, and where things went."""

    model_dir: Path
    oof_dir: Path
    dice: dict[str, float]
    fold_of_case: dict[str, int]
    patient_of_case: dict[str, str]
    seconds_per_fold: dict[int, float]


def prepare_dataset(voi_folder: Path, work: Path, config: SegmentationTrainingConfig) -> dict:
    """Export + fingerprint + preprocess into `work` unless done for the same source and padding; then plan.

    Returns the plans. Planning alone is redone every time (seconds); it does not change the preprocessed data.
    """
    folders = use_work_folder(work)
    name = dataset_name(config.dataset_id, DEFAULT_NAME)
    done_marker = folders.preprocessed / name / "lungnodule_explain_prepared.json"
    source = json.loads(json.dumps({"source": str(voi_folder.resolve()), "pad_mm": list(config.pad_mm)}))
    if done_marker.is_file() and json.loads(done_marker.read_text()) == source:
        logger.info("reusing the nnU-Net dataset and preprocessed data in %s", work)
        return plan(config.dataset_id, config.plans)
    shutil.rmtree(folders.preprocessed / name, ignore_errors=True)
    export_nnunet_dataset(voi_folder, folders.raw, config.dataset_id, DEFAULT_NAME, pad_mm=config.pad_mm,
                          overwrite=True)
    plans = fingerprint_and_preprocess(config.dataset_id, config.plans, num_processes=config.num_processes,
                                       check_integrity=config.check_integrity)
    write_json_atomic(done_marker, source)
    return plans


def train_fold(fold: int, config: SegmentationTrainingConfig,
               epoch_callback: Callable[[int, int, float, float], None] | None = None) -> Path:
    """Train one fold with nnUNetTrainerLungNodule; returns nnU-Net's fold output folder (checkpoint_final.pth)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed

    from .trainer import nnUNetTrainerLungNodule

    if config.torch_threads:
        torch.set_num_threads(int(config.torch_threads))
    base = Path(str(nnUNet_preprocessed)) / dataset_name(config.dataset_id, DEFAULT_NAME)
    plans = load_json(str(base / f"{PLANS_NAME}.json"))
    dataset_json = load_json(str(base / "dataset.json"))
    plans["continue_training"] = False  # nnunetv2 2.8's trainer pops this key (run_training.py sets it)
    trainer = nnUNetTrainerLungNodule(plans, CONFIGURATION, fold, dataset_json, device=resolve_device(config.device))
    trainer.configure(config.epochs, config.iterations_per_epoch, config.val_iterations_per_epoch,
                      config.initial_lr, epoch_callback)
    if config.init_from is not None:
        trainer.initialize()  # builds the network; run_training() then skips this step
        start = load_weights_checkpoint(Path(config.init_from) / f"fold_{fold}" / CHECKPOINT_NAME)
        try:  # all layers, strictly: this continues our own model, it is not transfer learning
            trainer.network.load_state_dict({k: v.float() for k, v in start["network_weights"].items()})
        except RuntimeError as error:
            raise ConfigError(f"init_from: {config.init_from}/fold_{fold} does not match the plans of this "
                              f"dataset ({error})") from error
        logger.info("fold %d: initialised from %s (trained %s)", fold, config.init_from,
                    start.get("lungnodule_explain", {}))
    trainer.run_training()
    return Path(trainer.output_folder)


def package_fold(fold_output: Path, destination: Path, float16: bool = True, extra: dict | None = None) -> Path:
    """Write a slim, weights-only `checkpoint_final.pth` (network weights, configuration, mirroring axes).

    The trainer's checkpoint also holds the optimizer state and logs; the shipped one loads with
    torch.load(weights_only=True) and, with trainer_name 'nnUNetTrainer', also in nnU-Net's own predictor.
    float16 halves the size; the network is float32 again after load_state_dict.
    """
    import torch
    checkpoint = torch.load(fold_output / CHECKPOINT_NAME, map_location="cpu", weights_only=False)  # our own file
    converted: dict = {}  # nnU-Net's state dict names one tensor several times; store each once
    weights = {}
    for key, value in checkpoint["network_weights"].items():
        identity = (value.data_ptr(), tuple(value.shape), value.stride())
        if identity not in converted:
            converted[identity] = value.half() if float16 and value.is_floating_point() else value
        weights[key] = converted[identity]
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    slim = {"network_weights": weights, "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": checkpoint["init_args"]["configuration"],
                          "fold": int(checkpoint["init_args"]["fold"])},
            "inference_allowed_mirroring_axes": tuple(int(a) for a in axes) if axes is not None else None,
            "current_epoch": int(checkpoint["current_epoch"]), "lungnodule_explain": extra or {}}
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / CHECKPOINT_NAME
    with atomic_path(target) as tmp:
        torch.save(slim, tmp)
    return target


def cross_validate(voi_folder: str | Path, work: str | Path, out: str | Path,
                   config: SegmentationTrainingConfig = SegmentationTrainingConfig(),
                   oof_dir: str | Path | None = None, overwrite: bool = False,
                   progress: Progress | None = None) -> CrossValidationResult:
    """Train `config.folds` on `voi_folder` (lidc-voi format), package them into `out`, write OOF maps and Dice.

    Raises OutputExistsError if `out` holds files, unless `overwrite` and this program wrote it (output_folder).
    """
    voi_folder, work, out = Path(voi_folder), Path(work), Path(out)
    check_output_folder(out, overwrite=overwrite)
    resolve_device(config.device)  # "cuda" without a GPU fails now, not after the preprocessing
    report = progress or (lambda fraction, message: logger.info("%s (%.0f%%)", message, 100 * fraction))
    work.mkdir(parents=True, exist_ok=True)
    report(0.0, "exporting and preprocessing with nnU-Net")
    prepare_dataset(voi_folder, work, config)
    folders = use_work_folder(work)
    name = dataset_name(config.dataset_id, DEFAULT_NAME)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    oof = Path(oof_dir) if oof_dir is not None else partial / "oof"  # moves into `out` with the rest
    shutil.copyfile(folders.preprocessed / name / f"{PLANS_NAME}.json", partial / "plans.json")
    shutil.copyfile(folders.raw / name / "dataset.json", partial / "dataset.json")
    splits = json.loads((folders.preprocessed / name / "splits_final.json").read_text())
    records = {r.case_id: r for r in read_voi_table(voi_folder, require_masks=True)}
    results_file = partial / "cross_validation.json"
    state = json.loads(results_file.read_text()) if results_file.is_file() else {"dice": {}, "fold_of_case": {},
                                                                                    "seconds_per_fold": {}}
    state["config"] = config.to_dict()
    n = len(config.folds)
    for i, fold in enumerate(config.folds):
        fold_dir = partial / f"fold_{fold}"
        if not (fold_dir / CHECKPOINT_NAME).is_file():
            started = time.perf_counter()

            def on_epoch(epoch: int, epochs: int, loss: float, pseudo_dice: float, i=i, fold=fold) -> None:
                report((i + 0.9 * epoch / epochs) / n,
                       f"fold {fold}: epoch {epoch}/{epochs}, train loss {loss:.3f}, pseudo-Dice {pseudo_dice:.3f}")

            fold_output = train_fold(fold, config, on_epoch)
            package_fold(fold_output, fold_dir, config.weights_float16, _training_record(config, fold))
            state["seconds_per_fold"][str(fold)] = time.perf_counter() - started
        if fold in state.setdefault("folds_done", []):
            continue
        report((i + 0.9) / n, f"fold {fold}: out-of-fold predictions")
        val_cases = splits[fold]["val"]
        fold_dice = write_oof(NoduleSegmenter(partial, folds=(fold,), device=config.device),
                              [records[c] for c in val_cases], oof)
        state["dice"].update(fold_dice)
        state["fold_of_case"].update({c: fold for c in val_cases})
        state["folds_done"].append(fold)
        write_json_atomic(results_file, state)
        report((i + 1) / n, f"fold {fold}: mean out-of-fold Dice {np.mean(list(fold_dice.values())):.3f}")
    replace_folder(partial, out, verb="train-segmentation")
    if oof_dir is None:
        oof = out / "oof"
    return CrossValidationResult(out, oof, {k: float(v) for k, v in state["dice"].items()},
                                 {k: int(v) for k, v in state["fold_of_case"].items()},
                                 {c: records[c].patient_id for c in state["dice"]},
                                 {int(k): float(v) for k, v in state["seconds_per_fold"].items()})


def trained_batches(checkpoint: dict) -> int:
    """Batches a packaged fold was trained, across any runs it continued (older folds record only this run's)."""
    record = checkpoint.get("lungnodule_explain", {})
    return int(record.get("batches", record.get("epochs", 0) * record.get("iterations_per_epoch", 0)))


def _training_record(config: SegmentationTrainingConfig, fold: int) -> dict:
    """What a packaged fold says about its training, batches counted across any runs it continued."""
    record = {"epochs": config.epochs, "iterations_per_epoch": config.iterations_per_epoch,
              "batches": config.epochs * config.iterations_per_epoch}
    if config.init_from is not None:
        start = load_weights_checkpoint(Path(config.init_from) / f"fold_{fold}" / CHECKPOINT_NAME)
        record.update(initialised_from=str(config.init_from), batches=record["batches"] + trained_batches(start))
    return record


def write_oof(segmenter: NoduleSegmenter, records: Sequence, oof_dir: Path) -> dict[str, float]:
    """Predict each record's VOI at its centre; write `<oof_dir>/<case_id>.nii.gz` (float32 [0, 1], VOI grid).

    Returns the Dice of the selected component against the record's mask, per case.
    """
    oof_dir.mkdir(parents=True, exist_ok=True)
    scores = {}
    for record in records:
        image = read_image(record.image_path)
        reference = read_image(record.mask_path, f"mask of case {record.case_id}", on_grid_of=image)
        result = segmenter.segment(image, seed_point(record, image, reference))
        with atomic_path(oof_dir / f"{record.case_id}.nii.gz") as tmp:
            sitk.WriteImage(result.probability, str(tmp), True)
        scores[record.case_id] = dice(sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(reference))
    return scores


