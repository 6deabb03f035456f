"""`lungnodule-explain calibrate`: fit per-output calibrators on out-of-fold predictions and add them to a bundle."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="add calibration.json to a bundle, fitted on out-of-fold predictions",
        description="Per output: isotonic or logistic-on-logit calibration, the lower log-loss on patients left out "
                    "of the fit; thresholds mapped onto the calibrated scale (no call changes). Writes "
                    "BUNDLE/calibration.json and its checksum into the manifest, atomically; weights untouched.")
    p.add_argument("--model", default=None, help="bundle folder to calibrate (default: the shipped bundle)")
    p.add_argument("--predictions", required=True,
                   help="CSV of out-of-fold predictions: patient_id, <output>_oof (the raw probability of a network "
                        "that never saw the patient) and <output>_label per output, e.g. from "
                        "benchmarks/out_of_fold/make_oof.py")
    p.add_argument("--suffix", default="_oof", help="column suffix of the raw probabilities (default _oof)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundle import add_calibration, default_bundle_path, load_bundle
    from ..calibration import fit_calibration, read_oof_predictions

    path = args.model or default_bundle_path()
    bundle = load_bundle(path)
    names = bundle.output_names
    probs, labels, groups = read_oof_predictions(args.predictions, names, args.suffix)
    doc = fit_calibration(probs, labels, groups, names, bundle.thresholds,
                          source=f"{len(probs)} out-of-fold predictions of {len(set(groups))} patients "
                                 f"({args.predictions})")
    add_calibration(path, doc)
    print(f"{'output':<20} {'method':<9} {'raw logloss':>11} {'isotonic':>9} {'logistic':>9} {'threshold':>17}")
    for name, o in doc["outputs"].items():
        losses = o["held_out_log_loss"]
        logistic = "n/a" if losses["logistic"] is None else f"{losses['logistic']:.4f}"
        print(f"{name:<20} {o['method']:<9} {o['raw_log_loss']:>11.4f} {losses['isotonic']:>9.4f} {logistic:>9} "
              f"{o['raw_threshold']:>7.3f} -> {o['threshold']:.3f}")
    print(f"calibration written to {path}/calibration.json (listed in its manifest)")
    return 0
