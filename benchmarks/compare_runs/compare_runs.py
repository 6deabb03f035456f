"""Two ensemble training runs (`train --members K`) on the same split, compared nodule by nodule.

    python benchmarks/compare_runs/compare_runs.py --baseline ens5 --candidate ens5_readers \
        [--out benchmarks/readers_malignancy/results.md]

Runs are named under $LUNGNODULE_RUNS; with --out the markdown, its numbers (.json) and the stamp are written.

Both runs must share the nodules (case ids) and prior (checked); their tables may differ in the columns they train
on (e.g. readers' ratings, benchmarks/lidc_reader_ratings/). Two paired estimates:
  1. the validation patients, scored by each run's bundle (the ensemble), where both runs held out the same ones;
  2. out of fold: each nodule by the member that picked its epoch on it, with that member's best weights read from
     its checkpoint (weights_only), as `train` pooled them for the thresholds; on the nodules both runs score so.
Where the candidate held out no patients (`train --val-fraction 0`: its members' folds cover every patient), the
baseline's validation patients are shown with the candidate's out-of-fold figure beside the baseline's bundle, and
no difference is taken: the candidate picked epochs on them, the baseline did not. Where neither held out patients
(two `--val-fraction 0` runs with the same members and seed: the same folds), the estimate is out of fold only.
Labels are the table's (the mode rule of the baseline's task set) whatever the runs trained on. The difference
candidate - baseline carries a 95% bootstrap CI that resamples patients and scores both runs on the same draw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from LungNoduleExplainLib.bundle import load_bundle
from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.patch import INPUT_CHANNELS
from LungNoduleExplainLib.data.voi_table import patient_folds, read_voi_table
from LungNoduleExplainLib.metrics import auc_with_ci, patient_resamples, safe_auc
from LungNoduleExplainLib.network_config import NetworkConfig
from LungNoduleExplainLib.networks import build_network
from LungNoduleExplainLib.tasks import TaskSet
from LungNoduleExplainLib.networks import predict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import named, runs_path, write_report  # noqa: E402


def paired_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: list[str], n_boot: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """AUC(b) - AUC(a) and its 95% percentile CI, resampling patients; both scored on every draw."""
    keep = ~np.isnan(y)
    y, a, b, groups = y[keep], a[keep], b[keep], np.asarray(groups)[keep]
    diffs = []
    for idx in patient_resamples(groups, n_boot, seed):
        if len(np.unique(y[idx])) == 2:
            diffs.append(safe_auc(y[idx], b[idx]) - safe_auc(y[idx], a[idx]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return safe_auc(y, b) - safe_auc(y, a), float(low), float(high)


def _mean_difference(results: dict, estimate: str) -> str:
    differences = [r[estimate]["difference"] for r in results.values()]
    return "" if None in differences else f"{np.mean([d[0] for d in differences]):+.3f}"


def run_folds(run: Path, records: list) -> tuple[list[int], list[int], list[list[int]]]:
    """(validation, training, each member's selection fold) as indices into `records`: the run's split.json, and
    the members' folds as runs._train_members cut them (checked against each member's split.json; runs older than
    those files have none)."""
    config = json.loads((run / "config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    val = [i for i, r in enumerate(records) if r.patient_id in set(split["val_patients"])]
    train = [i for i, r in enumerate(records) if r.patient_id in set(split["train_patients"])]
    folds = [[train[j] for j in fold] for fold in
             patient_folds([records[i] for i in train], config["spec"]["members"], config["training"]["seed"])]
    for k, fold in enumerate(folds):
        selection = run / f"member{k}" / "split.json"
        if selection.is_file():
            assert {records[i].patient_id for i in fold} == set(json.loads(selection.read_text())["selection_patients"])
    return val, train, folds


def run_predictions(run: Path, records: list, patches) -> tuple[np.ndarray, np.ndarray]:
    """(validation probabilities of the bundle, out-of-fold probabilities of the members on the training
    patients), each [N, outputs] over all patches, NaN where the estimate does not score a nodule."""
    config = json.loads((run / "config.json").read_text())
    network = NetworkConfig(**config["training"]["network"])
    n_manifestations = len(config["tasks"]["manifestations"])
    val, _, folds = run_folds(run, records)
    validation = np.full((len(patches), 1 + n_manifestations), np.nan)
    if val:
        validation[val] = predict(load_bundle(run / "bundle").model, patches.subset(val), torch.device("cpu"),
                                  network.inputs)
    oof = np.full_like(validation, np.nan)
    for k, fold in enumerate(folds):
        model = build_network(network, n_manifestations)
        state = torch.load(run / f"member{k}" / "checkpoint.pt", map_location="cpu", weights_only=True)["best_model"]
        model.load_state_dict(state)
        oof[fold] = predict(model, patches.subset(fold), torch.device("cpu"), network.inputs)
    return validation, oof


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=runs_path, required=True, help="a run under $LUNGNODULE_RUNS")
    p.add_argument("--candidate", type=runs_path, required=True, help="a run under $LUNGNODULE_RUNS")
    p.add_argument("--out", type=Path, default=None, help="write the markdown here too (and .json beside it)")
    args = p.parse_args(argv)
    configs = [json.loads((r / "config.json").read_text()) for r in (args.baseline, args.candidate)]
    if configs[0]["spec"]["prior"] != configs[1]["spec"]["prior"]:
        sys.exit("the runs were trained with different priors: not a paired comparison")
    splits = [json.loads((r / "split.json").read_text()) for r in (args.baseline, args.candidate)]
    same_validation = splits[0]["val_patients"] == splits[1]["val_patients"]
    if not same_validation and splits[1]["val_patients"]:
        sys.exit("the runs held out different validation patients: not a paired comparison")
    spec = configs[0]["spec"]
    task_set = TaskSet.from_dict(configs[0]["tasks"])
    records = read_voi_table(spec["data"], task_set, require_masks=spec["prior"] == "reference-mask")
    other = read_voi_table(configs[1]["spec"]["data"], require_masks=False, check_files=False)
    if [r.case_id for r in other] != [r.case_id for r in records]:
        sys.exit("the runs' tables hold different nodules: not a paired comparison")
    patches = build_patch_set(records, task_set, spec["prior"], channels=INPUT_CHANNELS)
    groups = patches.patient_ids
    base, cand = (run_predictions(r, records, patches) for r in (args.baseline, args.candidate))
    if not same_validation:  # the candidate scores the baseline's validation patients out of fold
        cand = (np.where(np.isnan(base[0]), np.nan, cand[1]), cand[1])
    candidate_validation = "candidate (bundle)" if same_validation else "candidate out of fold (epochs picked on them)"
    # two --val-fraction 0 runs have no validation patients: out of fold only
    estimates = (("validation", 0), ("out_of_fold", 1)) if splits[0]["val_patients"] else (("out_of_fold", 1),)
    header = "| output | " + (f"baseline's validation patients: baseline (bundle) | {candidate_validation} | "
                               "difference | " if len(estimates) == 2 else "")
    lines = [f"Baseline `{named(args.baseline)}`, candidate `{named(args.candidate)}`; data {named(Path(spec['data']))}, "
             f"prior {named(Path(spec['prior'])) if '/' in spec['prior'] else spec['prior']}. "
             "AUC (95% patient-bootstrap CI); difference candidate - baseline with a paired 95% CI.", "",
             header + "out of fold, both runs: baseline | candidate | difference |",
             "|---" * (1 + 3 * len(estimates)) + "|"]
    results = {}
    for k, name in enumerate(task_set.names):
        y, cells, results[name] = patches.labels[:, k], [], {}
        for estimate, column in estimates:
            scored = ~np.isnan(base[column][:, k]) & ~np.isnan(cand[column][:, k])
            yy, a, b = y[scored], base[column][scored, k], cand[column][scored, k]
            gg = [g for g, s in zip(groups, scored) if s]
            ca, cb = auc_with_ci(yy, a, gg), auc_with_ci(yy, b, gg)
            d = paired_difference(yy, a, b, gg) if same_validation or estimate == "out_of_fold" else None
            results[name][estimate] = {"baseline": ca, "candidate": cb, "difference": d,
                                       "n_patients": len(set(gg))}
            cells += [f"{ca['auc']:.3f} ({ca['ci_low']:.3f}–{ca['ci_high']:.3f})",
                      f"{cb['auc']:.3f} ({cb['ci_low']:.3f}–{cb['ci_high']:.3f})",
                      "not paired" if d is None else f"{d[0]:+.3f} ({d[1]:+.3f} to {d[2]:+.3f})"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n_patients = {e: results[task_set.names[0]][e]["n_patients"] for e, _ in estimates}
    lines.append("| mean difference |" + "".join(f" | | {_mean_difference(results, e)} |" for e, _ in estimates))
    write_report("\n".join(lines) + f"\n\nPatients (malignancy): {n_patients.get('validation', 0)} validation, "
                 f"{n_patients['out_of_fold']} scored out of fold by both.", results, args.out,
                 [args.baseline, args.candidate, Path(spec["data"])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
