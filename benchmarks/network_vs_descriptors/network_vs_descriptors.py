"""Does the network beat a regression on its own descriptors? An ensemble run's network against a logistic
regression on the very numbers its descriptor term sees (descriptors.py, from the run's prior), same nodules, same
folds, paired.

    python benchmarks/network_vs_descriptors/network_vs_descriptors.py --run ens5_all_pvoi --bundle-version 11

RUN is under $LUNGNODULE_RUNS; --bundle-version V writes results/vV.md (.json, .stamp.json), replacing that version's.

Two estimates, as benchmarks/compare_runs/compare_runs.py makes them: (1) the run's validation patients, the bundle against a
regression fit on all its training patients; (2) out of fold: each nodule scored by the member that picked its epoch
on it, against a regression fit on the same member's training patients. The regression fits the labels (modes).
A third row per estimate averages the two (mean of logits): what a late fusion would add. Differences carry a
paired 95% bootstrap CI that resamples patients.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import expit, logit

from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.data.voi_table import read_voi_table
from LungNoduleExplainLib.metrics import auc_with_ci
from LungNoduleExplainLib.network_config import NetworkConfig
from LungNoduleExplainLib.tasks import TaskSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import BENCHMARKS, named, runs_path, write_report  # noqa: E402
sys.path[:0] = [str(BENCHMARKS / "compare_runs"), str(BENCHMARKS / "descriptor_baseline")]
from compare_runs import paired_difference, run_folds, run_predictions  # noqa: E402
from descriptor_baseline import fit_predict, fmt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def regression_predictions(run: Path, records: list, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """(validation, out-of-fold) regression probabilities [N, outputs], NaN where the estimate scores no nodule;
    the folds are the run's members' (compare_runs.run_folds)."""
    val, train, folds = run_folds(run, records)
    val, train = np.asarray(val, dtype=int), np.asarray(train)
    validation, oof = np.full(labels.shape, np.nan), np.full(labels.shape, np.nan)
    for k in range(labels.shape[1]):
        if len(val):
            validation[val, k] = fit_predict(x, labels[:, k], train, val)
        for test in folds:
            oof[test, k] = fit_predict(x, labels[:, k], np.setdiff1d(train, test), np.asarray(test))
    return validation, oof


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=runs_path, required=True, help="a run under $LUNGNODULE_RUNS")
    p.add_argument("--bundle-version", default=None,
                   help="write results/v<VERSION>.md (and .json, .stamp.json), replacing that version's files")
    p.add_argument("--out", type=Path, default=None, help="write the markdown elsewhere (and .json beside it)")
    args = p.parse_args(argv)
    if args.out is None and args.bundle_version is not None:
        args.out = RESULTS / f"v{args.bundle_version}.md"
    config = json.loads((args.run / "config.json").read_text())
    spec, task_set = config["spec"], TaskSet.from_dict(config["tasks"])
    records = read_voi_table(spec["data"], task_set, require_masks=False)
    patches = build_patch_set(records, task_set, spec["prior"], channels=("percentile-voi",))  # descriptors only
    network = run_predictions(args.run, records, patches)
    n_descriptors = NetworkConfig(**config["training"]["network"]).n_descriptors  # the network's own set
    regression = regression_predictions(args.run, records, patches.descriptors[:, :n_descriptors], patches.labels)
    lines = [f"Run `{named(args.run)}` (data {named(Path(spec['data']))}, prior {spec['prior']}): the network against a logistic "
             "regression on its own descriptors, same nodules and folds. AUC (95% patient-bootstrap CI); "
             "differences with a paired 95% CI.", "",
             "| output | estimate | network | regression | network - regression | fusion (mean logit) - network |",
             "|---|---|---|---|---|---|"]
    results = {}
    for k, name in enumerate(task_set.names):
        results[name] = {}
        for e, estimate in enumerate(("validation", "out_of_fold")):
            scored = ~np.isnan(network[e][:, k])
            if not scored.any():
                continue
            y, a, b = patches.labels[scored, k], network[e][scored, k], regression[e][scored, k]
            fused = expit((logit(np.clip(a, 1e-6, 1 - 1e-6)) + logit(np.clip(b, 1e-6, 1 - 1e-6))) / 2)
            groups = [g for g, s in zip(patches.patient_ids, scored) if s]
            entry = {"network": auc_with_ci(y, a, groups), "regression": auc_with_ci(y, b, groups),
                     "network_minus_regression": paired_difference(y, b, a, groups),
                     "fusion_minus_network": paired_difference(y, a, fused, groups), "n_patients": len(set(groups))}
            results[name][estimate] = entry
            d, f = entry["network_minus_regression"], entry["fusion_minus_network"]
            lines.append(f"| {name} | {estimate.replace('_', ' ')} ({entry['n_patients']} patients) | "
                         f"{fmt(entry['network'])} | {fmt(entry['regression'])} | "
                         f"{d[0]:+.3f} ({d[1]:+.3f} to {d[2]:+.3f}) | {f[0]:+.3f} ({f[1]:+.3f} to {f[2]:+.3f}) |")
    for estimate in ("validation", "out_of_fold"):
        rows = [r[estimate] for r in results.values() if estimate in r]
        if rows:
            lines.append(f"| mean of the {len(rows)} | {estimate.replace('_', ' ')} | | | "
                         f"{np.mean([r['network_minus_regression'][0] for r in rows]):+.3f} | "
                         f"{np.mean([r['fusion_minus_network'][0] for r in rows]):+.3f} |")
    write_report("\n".join(lines), results, args.out, [args.run, Path(spec["data"])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
