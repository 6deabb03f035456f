"""Calibration on patients the calibrator never saw: nested by patient fold (criterion and protocol: README.md).

    python benchmarks/calibration/calibration_benchmark.py --predictions oof/predictions.csv \
        --out benchmarks/calibration
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold

from LungNoduleExplainLib.atomic import write_json_atomic, write_text_atomic
from LungNoduleExplainLib.bundle import default_bundle_path, read_manifest
from LungNoduleExplainLib.calibration import apply_output, fit_output, read_oof_predictions
from LungNoduleExplainLib.metrics import calibration_with_ci, reliability_bins
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import named, runs_path, write_stamp  # noqa: E402

TARGET_ECE = 0.05
OUTER_FOLDS = 5


def nested_calibrated(p: np.ndarray, y: np.ndarray, groups: np.ndarray, threshold: float
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(held-out calibrated probabilities, held-out calibrated threshold per row, method per outer fold)."""
    keep = ~np.isnan(y)
    q, t = np.full(len(p), np.nan), np.full(len(p), np.nan)
    methods = []
    for fit, held in GroupKFold(n_splits=OUTER_FOLDS).split(p, y, groups):
        fit = fit[keep[fit]]
        params = fit_output(p[fit], y[fit], groups[fit])
        q[held], t[held] = apply_output(params, p[held]), float(apply_output(params, threshold))
        methods.append(params["method"])
    return q, t, methods


def ece_noise_floor(q: np.ndarray, draws: int = 500, seed: int = 0) -> dict:
    """ECE of probabilities `q` that are exactly right: labels drawn as Bernoulli(q), `draws` times. The part of a
    measured ECE that finite bins of these nodules show even for a perfect calibration (median and 95th centile)."""
    from LungNoduleExplainLib.metrics import expected_calibration_error

    rng = np.random.default_rng(seed)
    values = [expected_calibration_error((rng.random(len(q)) < q).astype(float), q) for _ in range(draws)]
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95))}


def member_columns(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """<name> -> [N, members] probabilities of every member (4 of 5 saw each nodule's patient)."""
    import csv

    rows = list(csv.DictReader(path.open(newline="")))
    out = {}
    for n in names:
        cols = sorted(c for c in rows[0] if c.startswith(f"{n}_member"))
        out[n] = np.array([[float(r[c]) for c in cols] for r in rows])
    return out


def ensemble_effect(members: np.ndarray, fold: np.ndarray, params: dict) -> dict:
    """How the 5-member mean differs from one member, on the members that saw each nodule (in-sample both)."""
    ens = members.mean(axis=1)
    insample = np.array([[k != f for k in range(members.shape[1])] for f in fold])
    single = members[insample]  # every (nodule, in-sample member) pair
    ens_rep = np.repeat(ens, insample.sum(axis=1))
    cal_ens, cal_single = apply_output(params, ens_rep), apply_output(params, single)
    return {"median_abs_diff_raw": float(np.median(np.abs(ens_rep - single))),
            "sd_ratio_ensemble_to_member": float(np.std(ens) / np.std(single)),
            "mean_calibrated_ensemble": float(np.mean(cal_ens)), "mean_calibrated_member": float(np.mean(cal_single)),
            "median_abs_diff_calibrated": float(np.median(np.abs(cal_ens - cal_single)))}


def plot(names: list[str], labels: np.ndarray, raw: np.ndarray, cal: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2), squeeze=False)
    for ax, (k, name) in zip(axes.flat, enumerate(names)):
        for label, values, style, colour in (("raw", raw, "--", "grey"), ("calibrated", cal, "-", "C0")):
            bins = reliability_bins(labels[:, k], values[:, k])
            x, y = [b["mean_probability"] for b in bins], [b["positive_rate"] for b in bins]
            ax.plot(x, y, style, color=colour, marker="o", ms=3, lw=1.3, label=label)
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.6)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=name, xlabel="mean probability", ylabel="positive rate")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=runs_path, default=runs_path("oof/predictions.csv"),
                        help="under $LUNGNODULE_RUNS (default oof/predictions.csv, make_oof.py's)")
    parser.add_argument("--model", type=Path, default=None, help="bundle whose thresholds and outputs (default shipped)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    manifest = read_manifest(args.model or default_bundle_path())
    names = [n for n in manifest["thresholds"]]
    probs, labels, groups = read_oof_predictions(args.predictions, names)
    members = member_columns(args.predictions, names)
    import csv
    fold = np.array([int(r["fold"]) for r in csv.DictReader(args.predictions.open(newline=""))])
    calibrated = np.full_like(probs, np.nan)
    results = {}
    for k, name in enumerate(names):
        y, p, raw_t = labels[:, k], probs[:, k], float(manifest["thresholds"][name])
        q, t, methods = nested_calibrated(p, y, groups, raw_t)
        calibrated[:, k] = q
        keep = ~np.isnan(y)
        same_calls = int(np.sum((p[keep] >= raw_t) == (q[keep] >= t[keep])))
        full = fit_output(p, y, groups)  # what `calibrate` stores: fitted on all patients
        results[name] = {
            "n": int(keep.sum()), "n_positive": int(np.nansum(y)), "prevalence": float(np.nanmean(y)),
            "mean_raw": float(np.mean(p[keep])), "mean_calibrated": float(np.mean(q[keep])),
            "raw": calibration_with_ci(y, p, groups, n_boot=args.bootstrap),
            "calibrated": calibration_with_ci(y, q, groups, n_boot=args.bootstrap),
            "methods_by_outer_fold": methods, "same_calls": same_calls,
            "ensemble_effect": ensemble_effect(members[name], fold, full),
            "ece_if_perfect": ece_noise_floor(q[keep]),
        }
        r = results[name]
        r["meets_target"] = bool(r["calibrated"]["ece"] <= TARGET_ECE)
        print(f"{name:<20} ECE {r['raw']['ece']:.3f} -> {r['calibrated']['ece']:.3f}  Brier "
              f"{r['raw']['brier']:.3f} -> {r['calibrated']['brier']:.3f}  calls same {same_calls}/{r['n']}",
              file=sys.stderr)
    summary = {"predictions": named(args.predictions), "n_nodules": int(len(probs)),
               "n_patients": int(len(set(groups))), "target_ece": TARGET_ECE, "outer_folds": OUTER_FOLDS,
               "bootstrap": args.bootstrap, "outputs": results,
               "all_meet_target": all(r["meets_target"] for r in results.values())}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "calibration_benchmark.json", summary)
    write_text_atomic(args.out / "calibration_benchmark.md", markdown(summary))
    plot(names, labels, probs, calibrated, args.out / "reliability_oof.png")
    write_stamp(args.out / "calibration_benchmark.md", [args.predictions, args.model or default_bundle_path()])
    return 0


def markdown(s: dict) -> str:
    def ci(m: dict, key: str) -> str:
        return f"{m[key]:.3f} ({m[key + '_ci_low']:.3f}-{m[key + '_ci_high']:.3f})"

    lines = [f"# Calibration, nested by patient ({s['n_nodules']} nodules, {s['n_patients']} patients)", "",
             "Out-of-fold raw probabilities (one held-out member each); calibrator fitted on 4/5 of the patients, "
             "measured on the 5th, pooled. 95% CIs: patient bootstrap. Target: ECE <= "
             f"{s['target_ece']} for every output (README.md).", "",
             "| output | n (pos) | prevalence | mean raw -> cal | ECE raw | ECE calibrated | Brier raw | "
             "Brier calibrated | method (5 outer fits) | same calls | ECE if perfect (median, p95) | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in s["outputs"].items():
        methods = ", ".join(f"{m} x{r['methods_by_outer_fold'].count(m)}" for m in sorted(set(r["methods_by_outer_fold"])))
        lines.append(f"| {name} | {r['n']} ({r['n_positive']}) | {r['prevalence']:.3f} | {r['mean_raw']:.3f} -> "
                     f"{r['mean_calibrated']:.3f} | {ci(r['raw'], 'ece')} | {ci(r['calibrated'], 'ece')} | "
                     f"{ci(r['raw'], 'brier')} | {ci(r['calibrated'], 'brier')} | {methods} | "
                     f"{r['same_calls']}/{r['n']} | {r['ece_if_perfect']['median']:.3f}, "
                     f"{r['ece_if_perfect']['p95']:.3f} | {'met' if r['meets_target'] else 'NOT met'} |")
    lines += ["", f"All outputs meet the target: **{'yes' if s['all_meet_target'] else 'no'}**.", "",
              "'ECE if perfect': the ECE these nodules' bins show when labels are drawn from the calibrated "
              "probabilities themselves (500 draws), i.e. the part of a measured ECE that sampling alone gives.", "",
              "## Caveat: the product averages 5 members; these probabilities are one member each", "",
              "All members on all nodules (4 of 5 in-sample for each nodule; both sides in-sample): median "
              "|ensemble mean - one member|, SD of the ensemble mean over SD of single members, and the mean "
              "calibrated value of each (calibrator fitted on all out-of-fold predictions, as shipped).", "",
              "| output | median abs diff (raw) | SD ratio ens/member | mean calibrated ens | mean calibrated member |"
              " median abs diff (calibrated) |", "|---|---|---|---|---|---|"]
    for name, r in s["outputs"].items():
        e = r["ensemble_effect"]
        lines.append(f"| {name} | {e['median_abs_diff_raw']:.3f} | {e['sd_ratio_ensemble_to_member']:.3f} | "
                     f"{e['mean_calibrated_ensemble']:.3f} | {e['mean_calibrated_member']:.3f} | "
                     f"{e['median_abs_diff_calibrated']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
