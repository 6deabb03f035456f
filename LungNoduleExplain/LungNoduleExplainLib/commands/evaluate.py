"""`lungnodule-explain evaluate`: judge a model bundle on any dataset folder in the lidc-voi format."""

from __future__ import annotations

import argparse
import math

from .device_option import add_device_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="AUCs with patient-bootstrap CIs, threshold metrics, size baseline, ECE/Brier, ROC and "
                         "reliability diagrams",
        description="Writes OUT/metrics.json, OUT/predictions.csv, OUT/roc_curves.png and OUT/reliability.png "
                    "(keys in README.md).")
    p.add_argument("--data", required=True, help="dataset folder: nodules.csv, images/, masks/")
    p.add_argument("--model", default=None, help="model bundle folder (default: the bundle shipped with the package)")
    p.add_argument("--out", required=True, help="output folder (refused when not empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it holds an earlier evaluation (never a folder this program did not write)")
    p.add_argument("--prior", default="auto",
                   help="what feeds the attention gates: auto (what the classifier was trained with), "
                        "reference-mask, segmentation (the bundle's nnU-Net model, as at analysis time; reports "
                        "Dice) or a folder of probability maps <case_id>.nii.gz, e.g. out-of-fold nnU-Net maps")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of patients (default 1000)")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_folder

    metrics = evaluate_folder(args.data, args.model, args.out, prior=args.prior, device=args.device,
                              n_boot=args.bootstrap, overwrite=args.overwrite)
    print(f"{metrics['n_nodules']} nodules of {metrics['n_patients']} patients, prior: {metrics['prior']}, "
          f"probabilities {'calibrated' if metrics['calibrated'] else 'raw (uncalibrated)'}")
    for warning in metrics["warnings"]:
        print(f"warning: {warning}")
    print(f"{'output':<20} {'AUC':>6} {'95% CI':>13} {'size AUC':>9} {'n':>5} {'pos':>5} {'ECE':>6} {'Brier':>6}")
    for name, m in metrics["outputs"].items():
        ci = f"{m['ci_low']:.3f}-{m['ci_high']:.3f}" if not math.isnan(m["ci_low"]) else "n/a"
        print(f"{name:<20} {m['auc']:>6.3f} {ci:>13} {m['size_baseline']['auc']:>9.3f} {m['n']:>5} {m['n_positive']:>5}"
              f" {m['ece']:>6.3f} {m['brier']:>6.3f}")
    if "segmentation_dice" in metrics:
        d = metrics["segmentation_dice"]
        print(f"segmentation Dice {d['mean']:.3f} ({d['ci_low']:.3f}-{d['ci_high']:.3f}), n={d['n']}")
    print(f"written to {args.out}")
    return 0
