"""Segmentation benchmark: cross-validation Dice (bootstrap CI by patient) and CPU timing, crop vs whole CT.

    nice -n 10 python benchmarks/segmentation_benchmark.py --model /work/seg_model \
        --data ../shared/data/lidc-voi --ct ../shared/data/lidc-ct --out benchmarks/segmentation_results.md

Dice comes from the model folder's cross_validation.json (written by `lungnodule-explain train-segmentation`);
timings are measured here on the three real DICOM sub-stacks of lidc-ct, with the torch threads given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


MARKER = "## Measured (recorded by benchmarks/segmentation_benchmark.py)"


def cv_summary(model: Path, data: Path) -> tuple[dict, list[str]]:
    from LungNoduleExplainLib.data.voi_table import read_voi_table
    from LungNoduleExplainLib.segmentation.metrics import bootstrap_mean_ci

    cv = json.loads((model / "cross_validation.json").read_text())
    patients = {r.case_id: r.patient_id for r in read_voi_table(data)}
    dice = {c: float(v) for c, v in cv["dice"].items()}
    mean, low, high = bootstrap_mean_ci(dice, patients, n_boot=2000, seed=0)
    lines = [f"| all folds | {len(dice)} | {len({patients[c] for c in dice})} | {mean:.3f} | {low:.3f} - {high:.3f} "
             f"| {np.median(list(dice.values())):.3f} |"]
    for fold in sorted({int(f) for f in cv["fold_of_case"].values()}):
        d = {c: v for c, v in dice.items() if int(cv["fold_of_case"][c]) == fold}
        m, lo, hi = bootstrap_mean_ci(d, patients, n_boot=2000, seed=0)
        lines.append(f"| fold {fold} | {len(d)} | {len({patients[c] for c in d})} | {m:.3f} | {lo:.3f} - {hi:.3f} "
                     f"| {np.median(list(d.values())):.3f} |")
    return {"mean": mean, "ci": [low, high], "n": len(dice), "config": cv.get("config", {}),
            "seconds_per_fold": cv.get("seconds_per_fold", {})}, lines


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def timing(model: Path, ct_root: Path, repeats: int) -> list[str]:
    from LungNoduleExplainLib.segmentation import NoduleSegmenter
    from LungNoduleExplainLib.volume import read_ct

    nodules = json.loads((ct_root / "nodules.json").read_text())
    rows = []
    ensemble = NoduleSegmenter(model, device="cpu")
    single = NoduleSegmenter(model, folds=ensemble.folds[:1], device="cpu")
    for nodule in nodules:
        ct = read_ct(ct_root / nodule["patient_id"] / "dicom")
        point = nodule["centroid_lps_mm"]
        single.segment(ct, point)  # warm-up
        t1, r1 = timed(lambda: single.segment(ct, point), repeats)
        t5, r5 = timed(lambda: ensemble.segment(ct, point), repeats)
        hu = sitk.GetArrayFromImage(ct).astype(np.float32)
        start = time.perf_counter()
        whole = single.predict_array(hu, ct.GetSpacing()[::-1])
        t_whole = time.perf_counter() - start
        rows.append(f"| {nodule['patient_id']} | {'x'.join(map(str, ct.GetSize()))} | "
                    f"{nodule['diam_mm_mean']:.1f} | {r5.volume_mm3:.0f} | {t1:.2f} | {t5:.2f} | {t_whole:.1f} | "
                    f"{t_whole / np.prod(ct.GetSize()) * 512 * 512 * 300:.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ct", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    summary, cv_lines = cv_summary(args.model, args.data)
    time_rows = timing(args.model, args.ct, args.repeats)
    load = os.getloadavg()
    text = "\n".join([
        MARKER, "",
        f"Command: `nice -n 10 python benchmarks/segmentation_benchmark.py {' '.join(sys.argv[1:])}`", "",
        f"Training settings: {json.dumps({k: summary['config'].get(k) for k in ('epochs', 'iterations_per_epoch', 'val_iterations_per_epoch', 'plans', 'torch_threads')})}",
        f"Training seconds per fold: {json.dumps(summary['seconds_per_fold'])}", "",
        "Out-of-fold Dice (selected component at the VOI centre vs the VOI mask; 95% CI: bootstrap over patients, 2000 draws):", "",
        "| split | nodules | patients | mean Dice | 95% CI | median |", "|---|---|---|---|---|---|", *cv_lines, "",
        f"Timing on {platform.processor() or platform.machine()}, torch threads {args.threads}, median of "
        f"{args.repeats}; load average while measuring {load[0]:.1f} / {load[1]:.1f} (2 cores shared):", "",
        "| series | size (x y z) | nodule diam. mm | mask mm3 (5 folds) | crop, 1 fold s | crop, 5 folds s | "
        "whole stack, 1 fold s | whole 512x512x300 CT, 1 fold, extrapolated s |",
        "|---|---|---|---|---|---|---|---|", *time_rows, ""])
    # Keep any hand-written preamble above the measured section.
    previous = args.out.read_text() if args.out.is_file() else ""
    preamble = previous.split(MARKER)[0] if MARKER in previous else previous
    args.out.write_text(preamble + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
