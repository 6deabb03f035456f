"""The radiomics-style bar on our own data: logistic regression on the nodule descriptors (descriptors.py: shape
and HU of the reference-mask region, the same numbers the network's descriptor term sees), beside the size-only
baseline and, when --run is given, the trained network on the very same validation patients.

    python benchmarks/descriptor_baseline/descriptor_baseline.py --data lidc-voi [--run default] \
        [--out benchmarks/descriptor_baseline/descriptor_baseline.md]

Two estimates, both split by patient: (1) the training run's split (`patient_split`, 20% of patients, seed 0),
so the network and the regression are judged on the same patients; (2) patient-grouped 5-fold cross-validation,
pooled out-of-fold predictions (more patients per AUC, so narrower CIs). AUC with 95% patient-bootstrap CIs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.data.voi_table import patient_folds, patient_split, read_voi_table
from LungNoduleExplainLib.descriptors import DESCRIPTOR_SETS
from LungNoduleExplainLib.metrics import auc_with_ci
from LungNoduleExplainLib.network_config import DEFAULT_DESCRIPTOR_SET
from LungNoduleExplainLib.tasks import load_task_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, named, runs_path, write_report  # noqa: E402


def fit_predict(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Probabilities on `test` of a standardised logistic regression fit on the labelled part of `train`."""
    labelled = train[~np.isnan(y[train])]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(x[labelled], y[labelled])
    return model.predict_proba(x[test])[:, 1]


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Pooled out-of-fold probabilities: each fold predicted by a regression fit on the other folds."""
    oof = np.full(len(y), np.nan)
    for f, test in enumerate(folds):
        oof[test] = fit_predict(x, y, np.concatenate([g for j, g in enumerate(folds) if j != f]), test)
    return oof


def fmt(m: dict | None) -> str:
    if m is None or math.isnan(m["auc"]):
        return "n/a"
    return f"{m['auc']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    p.add_argument("--tasks", default="lidc")
    p.add_argument("--run", type=runs_path, default=None, help="a training run (under $LUNGNODULE_RUNS) whose bundle's validation AUCs to quote")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--descriptor-set", default=DEFAULT_DESCRIPTOR_SET, choices=list(DESCRIPTOR_SETS))
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = p.parse_args(argv)

    task_set = load_task_set(args.tasks)
    records = read_voi_table(args.data, task_set)
    patches = build_patch_set(records, task_set, channels=("percentile-voi",))  # only descriptors are read
    x = patches.descriptors[:, :len(DESCRIPTOR_SETS[args.descriptor_set])].astype(np.float64)
    labels, groups = patches.labels, patches.patient_ids
    train_idx, val_idx = (np.asarray(i) for i in patient_split(records, args.val_fraction, args.seed))
    folds = [np.asarray(f) for f in patient_folds(records, args.folds, args.seed)]
    network = None
    if args.run is not None:
        manifest = json.loads((args.run / "bundle" / "manifest.json").read_text())
        network = manifest["metrics"]["validation"]

    lines = [f"Data: {named(args.data)} ({len(records)} nodules, {len(set(groups))} patients). AUC (95% patient-bootstrap "
             "CI).", "",
             f"| output | network, validation patients | descriptors + LR, validation patients | size only, "
             f"validation | descriptors + LR, {args.folds}-fold CV | size only, {args.folds}-fold CV |",
             "|---|---|---|---|---|---|"]
    results = {}
    for k, name in enumerate(task_set.names):
        y = labels[:, k]
        val_groups = [groups[i] for i in val_idx]
        lr_val = auc_with_ci(y[val_idx], fit_predict(x, y, train_idx, val_idx), val_groups)
        size_val = auc_with_ci(y[val_idx], patches.diameters_mm[val_idx], val_groups)
        lr_cv = auc_with_ci(y, out_of_fold(x, y, folds), groups)
        size_cv = auc_with_ci(y, patches.diameters_mm, groups)
        net = network.get(name) if network else None
        results[name] = {"network_validation": net and {k2: net[k2] for k2 in ("auc", "ci_low", "ci_high")},
                         "descriptors_lr_validation": lr_val, "size_validation": size_val,
                         "descriptors_lr_cv": lr_cv, "size_cv": size_cv}
        lines.append(f"| {name} | {fmt(net)} | {fmt(lr_val)} | {fmt(size_val)} | {fmt(lr_cv)} | {fmt(size_cv)} |")
    write_report("\n".join(lines), results, args.out, [args.data, *([args.run] if args.run else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
