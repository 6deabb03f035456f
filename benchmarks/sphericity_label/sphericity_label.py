"""Why "round" scores far below the paper's sphericity: the two are different labels.

    python benchmarks/sphericity_label/sphericity_label.py --data lidc-voi \
        [--predictions EVALUATE_OUT/predictions.csv] [--out benchmarks/sphericity_label/sphericity_label.md]

Our "round" is the readers' sphericity rating (mode 4-5 vs 1-3, configs/tasks-lidc.json). The authors' final code
(METHOD.md) labels sphericity from the consensus mask instead: shape sphericity >= 0.8. This script computes that
shape label from each reference mask (sphericity = pi^(1/3) (6 V)^(2/3) / A, SimpleITK's roundness, surface A
from its label perimeter; pyradiomics measures A on a marching-cubes mesh, so values differ somewhat, and small
voxelised masks can exceed 1) and reports how far the two labels agree, how well the mask's sphericity predicts the readers' rating,
and, given an `evaluate` predictions.csv, the AUC of the model's round output against both labels on its nodules.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import cohen_kappa_score

from LungNoduleExplainLib.data.voi_table import read_image, read_voi_table
from LungNoduleExplainLib.metrics import auc_with_ci
from LungNoduleExplainLib.tasks import load_task_set
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, named, runs_path, write_stamp  # noqa: E402

THRESHOLD = 0.8


def mask_sphericity(mask: sitk.Image) -> float:
    """pi^(1/3) (6 V)^(2/3) / A: ITK's roundness (equivalent spherical perimeter / perimeter) is exactly this."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.SetComputePerimeter(True)
    shape.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return float(shape.GetRoundness(1))


def fmt(m: dict) -> str:
    return f"{m['auc']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f}), n={m['n']} ({m['n_positive']} positive)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--predictions", type=runs_path, default=None,
                        help="an `evaluate` predictions.csv, under $LUNGNODULE_RUNS")
    parser.add_argument("--out", type=Path, default=None, help="e.g. benchmarks/sphericity_label/sphericity_label.md")
    args = parser.parse_args(argv)

    task_set = load_task_set("lidc")
    k = task_set.names.index("round")
    records = read_voi_table(args.data, task_set)
    sphericity = {r.case_id: mask_sphericity(read_image(r.mask_path, "mask")) for r in records}
    rating = {r.case_id: np.nan if (y := r.labels(task_set)[k]) is None else float(y) for r in records}
    patients = {r.case_id: r.patient_id for r in records}
    cases = [c for c in sphericity if not np.isnan(rating[c])]
    s = np.array([sphericity[c] for c in cases])
    y_rating = np.array([rating[c] for c in cases])
    y_shape = (s >= THRESHOLD).astype(float)
    groups = [patients[c] for c in cases]
    lines = [
        "# Sphericity: the readers' rating vs the authors' mask-shape label", "",
        f"Command: `python benchmarks/sphericity_label/sphericity_label.py {' '.join(sys.argv[1:])}`", "",
        f"{len(cases)} nodules of {len(set(groups))} patients. Readers' label (ours, 'round'): "
        f"{int(y_rating.sum())} positive. Authors' label (mask sphericity >= {THRESHOLD}): {int(y_shape.sum())} "
        f"positive. Mask sphericity: median {np.median(s):.3f}, 10-90% {np.quantile(s, 0.1):.3f}-"
        f"{np.quantile(s, 0.9):.3f}.", "",
        f"- The two labels agree on {np.mean(y_rating == y_shape):.1%} of the nodules "
        f"(Cohen's kappa {cohen_kappa_score(y_rating, y_shape):.2f}).",
        "- The mask's sphericity as a score for the readers' label: "
        + fmt(auc_with_ci(y_rating, s, groups)) + " (AUC, 95% CI by patient).",
    ]
    if args.predictions is not None:
        rows = [r for r in csv.DictReader(args.predictions.open()) if r["case_id"] in sphericity]
        p = np.array([float(r["round_probability"]) for r in rows])
        yr = np.array([rating[r["case_id"]] for r in rows])
        ys = np.array([float(sphericity[r["case_id"]] >= THRESHOLD) for r in rows])
        g = [patients[r["case_id"]] for r in rows]
        lines += [f"- The model's round output ({named(args.predictions)}), trained on the readers' label, on its "
                  f"{len(rows)} nodules: against the readers' label " + fmt(auc_with_ci(yr, p, g))
                  + "; against the authors' shape label " + fmt(auc_with_ci(ys, p, g)) + "."]
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(text)
        write_stamp(args.out, [args.data, *([args.predictions] if args.predictions else [])])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
