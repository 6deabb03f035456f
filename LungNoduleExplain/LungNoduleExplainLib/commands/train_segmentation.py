"""`lungnodule-explain train-segmentation`: five-fold nnU-Net v2 nodule segmentation on a lidc-voi folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..vocabulary import Device
from .device_option import add_device_argument

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-segmentation", help="train the nnU-Net v2 nodule segmentation (5-fold CV by patient)",
        description="Export a nodule table folder (lidc-voi format) to nnU-Net v2, plan a small model, train the "
                    "requested folds, and write the model folder plus each training nodule's out-of-fold "
                    "probability map (the classifier's prior).")
    parser.add_argument("--data", required=True, type=Path, help="nodule table folder (nodules.csv, images/, masks/)")
    parser.add_argument("--work", required=True, type=Path,
                        help="work folder for nnU-Net's raw, preprocessed and results folders (reused on rerun)")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create (plans.json, fold_k/)")
    parser.add_argument("--oof-dir", type=Path, default=None,
                        help="where out-of-fold probability maps go (default: OUT/oof)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], choices=range(5), metavar="K",
                        help="folds to train, 0-4 (default: all five)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per fold (default: 20)")
    parser.add_argument("--iterations", type=int, default=30, help="training batches per epoch (default: 30)")
    parser.add_argument("--val-iterations", type=int, default=4, help="validation batches per epoch (default: 4)")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial learning rate, poly decay (default: 0.01)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="MODEL_DIR",
                        help="continue training: fold k starts from MODEL_DIR/fold_k (same plans); the out-of-fold "
                             "maps stay out of fold because fold k only ever sees its own training patients")
    parser.add_argument("--features", type=int, nargs=2, default=[8, 64], metavar=("FIRST", "MAX"),
                        help="features of the first stage and the cap (default: 8 64, small enough for 2 CPU cores; "
                             "nnU-Net's own default is 32 320, for a GPU)")
    add_device_argument(parser, default=Device.CPU, what="training device")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for preprocessing (default: 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest on a crowded machine)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..segmentation.metrics import bootstrap_mean_ci
    from ..segmentation.plans import SmallPlansConfig
    from ..segmentation.training import SegmentationTrainingConfig, cross_validate

    try:
        plans = SmallPlansConfig(base_features=args.features[0], max_features=args.features[1])
    except ValueError as error:
        raise ConfigError(f"--features: {error}") from error

    config = SegmentationTrainingConfig(folds=tuple(args.folds), epochs=args.epochs,
                                        iterations_per_epoch=args.iterations,
                                        val_iterations_per_epoch=args.val_iterations, initial_lr=args.lr,
                                        init_from=str(args.init_from) if args.init_from else None,
                                        device=args.device, plans=plans,
                                        num_processes=args.processes, torch_threads=args.threads)
    result = cross_validate(args.data, args.work, args.out, config, oof_dir=args.oof_dir, overwrite=args.overwrite,
                            progress=lambda fraction, message: logger.info("[%3.0f%%] %s", 100 * fraction, message))
    mean, low, high = bootstrap_mean_ci(result.dice, result.patient_of_case)
    summary = {"model_dir": str(result.model_dir), "oof_dir": str(result.oof_dir), "cases": len(result.dice),
               "patients": len(set(result.patient_of_case.values())), "dice_mean": mean,
               "dice_ci95_by_patient": [low, high], "seconds_per_fold": result.seconds_per_fold}
    print(json.dumps(summary, indent=1))
    return 0
