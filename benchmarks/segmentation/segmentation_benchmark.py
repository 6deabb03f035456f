"""Segmentation benchmark: cross-validation Dice (bootstrap CI by patient) and CPU timing, crop vs whole CT.

    nice -n 10 python benchmarks/segmentation/segmentation_benchmark.py \
        --oof seg_oof --out benchmarks/segmentation/results.md

Dice comes from the out-of-fold probability maps in --oof (`lungnodule-explain train-segmentation` writes them;
--write-oof rewrites them with the fold models and the current inference code); timings are measured here on the
three real DICOM sub-stacks of lidc-ct, with the torch threads given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, write_stamp  # noqa: E402


MARKER = "## Measured (recorded by benchmarks/segmentation/segmentation_benchmark.py)"


def oof_dice(data: Path, oof_dir: Path) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
    """Dice of every OOF map present (component at the seed point vs the mask), with each case's fold and patient."""
    from LungNoduleExplainLib.data.voi_table import read_image, read_voi_table
    from LungNoduleExplainLib.segmentation.export import patient_grouped_splits
    from LungNoduleExplainLib.segmentation.metrics import dice_at_point, seed_point

    records = read_voi_table(data)
    fold_of = {c: k for k, split in enumerate(patient_grouped_splits(records)) for c in split["val"]}
    scores = {}
    for record in records:
        path = oof_dir / f"{record.case_id}.nii.gz"
        if path.is_file():
            probability, reference = read_image(path), read_image(record.mask_path, "mask")
            # the point each map was segmented from: the centre, or the mask centroid where the centre is outside
            # (an OOF map lies on its VOI's grid, so it stands in for the VOI image here)
            scores[record.case_id] = dice_at_point(probability, reference, seed_point(record, probability, reference))
    return scores, fold_of, {r.case_id: r.patient_id for r in records}


def write_oof_maps(model: Path, data: Path, oof_dir: Path) -> None:
    """Segment every nodule with the fold model that never saw its patient (the shipped default crop), as
    `train-segmentation` does after each fold; for re-measuring a finished model after an inference change.
    Which fold validated which case is read from the model's own cross_validation.json, not re-derived."""
    from LungNoduleExplainLib.data.voi_table import read_voi_table
    from LungNoduleExplainLib.segmentation import NoduleSegmenter
    from LungNoduleExplainLib.segmentation.training import write_oof

    records = {r.case_id: r for r in read_voi_table(data, require_masks=True)}
    fold_of_case = json.loads((model / "cross_validation.json").read_text())["fold_of_case"]
    for fold in sorted(set(fold_of_case.values())):
        cases = [records[c] for c, k in fold_of_case.items() if k == fold]
        write_oof(NoduleSegmenter(model, folds=(fold,), device="cpu"), cases, oof_dir)
        print(f"fold {fold}: {len(cases)} out-of-fold maps in {oof_dir}", flush=True)


def cv_summary(data: Path, oof_dir: Path) -> list[str]:
    """Markdown rows: mean Dice with its CI per fold and over all maps, then by the table's diameter."""
    from LungNoduleExplainLib.data.voi_table import read_voi_table
    from LungNoduleExplainLib.segmentation.metrics import bootstrap_mean_ci

    dice, fold_of, patients = oof_dice(data, oof_dir)
    diameter = {r.case_id: r.diameter_mm for r in read_voi_table(data)}
    groups = {"all OOF maps present": dice}
    for fold in sorted({fold_of[c] for c in dice}):
        groups[f"fold {fold}"] = {c: v for c, v in dice.items() if fold_of[c] == fold}
    for low, high in ((0, 6), (6, 10), (10, 20), (20, float("inf"))):
        name = f"diameter >= {low} mm" if high == float("inf") else f"diameter {low}-{high} mm"
        groups[name] = {c: v for c, v in dice.items() if low <= diameter[c] < high}
    lines = []
    for name, d in groups.items():
        if not d:
            lines.append(f"| {name} | 0 | 0 | - | - | - | - |")
            continue
        mean, low, high = bootstrap_mean_ci(d, patients, n_boot=2000, seed=0)
        values = np.asarray(list(d.values()))
        lines.append(f"| {name} | {len(d)} | {len({patients[c] for c in d})} | {mean:.3f} | {low:.3f} - {high:.3f} "
                     f"| {np.median(values):.3f} | {np.mean(values == 0):.2f} |")
    return lines


CV_HEADER = ["| split | nodules | patients | mean Dice | 95% CI | median | share with Dice 0 |",
             "|---|---|---|---|---|---|---|"]


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median CPU seconds of this process (all threads) over `repeats` calls."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


def timing(model: Path, ct_root: Path, repeats: int, whole_ct: str) -> list[str]:
    """Rows per lidc-ct series: the default crop, the same with PyTorch's own convolution choice, and nnU-Net on the
    whole stack."""
    import torch

    from LungNoduleExplainLib.segmentation import NoduleSegmenter
    from LungNoduleExplainLib.volume import read_ct

    nodules = json.loads((ct_root / "nodules.json").read_text())
    segmenter = NoduleSegmenter(model, device="cpu", recent_crops=0)  # timed: nothing answered from memory
    plain = NoduleSegmenter(model, device="cpu", recent_crops=0)
    for module in plain._predictor.network.modules():  # undo devices.use_onednn_convolutions: what it buys
        if isinstance(module, torch.nn.Conv3d):
            module.__class__ = torch.nn.Conv3d
    rows = []
    for nodule in nodules:
        ct = read_ct(ct_root / nodule["patient_id"] / "dicom")
        point = nodule["centroid_lps_mm"]
        segmenter.segment(ct, point), plain.segment(ct, point)  # warm-up
        wall, cpu, result = timed(lambda: segmenter.segment(ct, point), repeats)
        plain_wall, plain_cpu, plain_result = timed(lambda: plain.segment(ct, point), repeats)
        same = np.array_equal(sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(plain_result.mask))
        cells = [nodule["patient_id"], "x".join(map(str, ct.GetSize())), f"{nodule['diam_mm_mean']:.1f}",
                 f"{result.volume_mm3:.0f}", f"{2 * (3 * result.volume_mm3 / (4 * np.pi)) ** (1 / 3):.1f}",
                 f"{wall:.2f} / {cpu:.2f}", f"{plain_wall:.2f} / {plain_cpu:.2f}", "yes" if same else "**no**",
                 "", ""]
        if nodule["patient_id"] == whole_ct:  # one fold (minutes each), extrapolated to the ensemble and 300 slices
            one_fold = NoduleSegmenter(model, folds=segmenter.folds[:1], device="cpu", recent_crops=0)
            hu = sitk.GetArrayFromImage(ct).astype(np.float32)
            w, c, _ = timed(lambda: one_fold.predict_array(hu, ct.GetSpacing()[::-1]), 1)
            scale = 300 / ct.GetSize()[2] * len(segmenter.folds)
            cells[-2:] = [f"{w:.1f} / {c:.1f}", f"{c * scale:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def whole_ct_only(args: argparse.Namespace) -> int:
    from LungNoduleExplainLib.segmentation import NoduleSegmenter
    from LungNoduleExplainLib.volume import read_ct

    segmenter = NoduleSegmenter(args.model, device="cpu", recent_crops=0)
    ct = read_ct(args.ct / args.whole_ct / "dicom")
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    wall, cpu, _ = timed(lambda: segmenter.predict_array(hu, ct.GetSpacing()[::-1]), 1)
    print(f"whole {args.whole_ct} {ct.GetSize()} folds {segmenter.folds} threads {args.threads}: wall {wall:.1f} s, "
          f"CPU {cpu:.1f} s; per 512x512x300 CT {cpu * 300 / ct.GetSize()[2]:.0f} CPU s; "
          f"load {os.getloadavg()[0]:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=runs_path, default=None,
                        help="nnU-Net model folder under $LUNGNODULE_RUNS (default: the shipped bundle's)")
    parser.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--ct", type=data_path, default=data_path("lidc-ct"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--oof", type=runs_path, default=None, help="folder of out-of-fold probability maps under $LUNGNODULE_RUNS")
    parser.add_argument("--whole-ct", default="LIDC-IDRI-0001", help="series also predicted whole")
    parser.add_argument("--write-oof", action="store_true",
                        help="first (re)write --oof with the model's fold models and the current inference code")
    parser.add_argument("--dice-only", action="store_true", help="only print the OOF Dice table of --oof")
    parser.add_argument("--whole-ct-only", action="store_true",
                        help="only time nnU-Net on the whole --whole-ct series and print it (no Dice, no crops)")
    args = parser.parse_args(argv)
    if args.model is None:
        from LungNoduleExplainLib.bundle import default_bundle_path
        args.model = default_bundle_path() / "segmentation"
    if (args.write_oof or args.dice_only) and args.oof is None:
        parser.error("--write-oof and --dice-only need --oof DIR")
    import torch
    torch.set_num_threads(args.threads)
    if args.whole_ct_only:
        return whole_ct_only(args)
    if args.write_oof:
        write_oof_maps(args.model, args.data, args.oof)
    if args.dice_only:
        print("\n".join([*CV_HEADER, *cv_summary(args.data, args.oof)]))
        return 0
    cv_lines = cv_summary(args.data, args.oof) if args.oof else []
    time_rows = timing(args.model, args.ct, args.repeats, args.whole_ct)
    load = os.getloadavg()
    from LungNoduleExplainLib.segmentation.predict import find_folds
    text = "\n".join([
        MARKER, "",
        f"Command: `python benchmarks/segmentation/segmentation_benchmark.py {' '.join(sys.argv[1:])}`", "",
        "Out-of-fold Dice (component of p >= 0.5 at the seed point, the VOI centre or, where that lies outside "
        "the VOI, the mask centroid, vs the VOI mask; 95% CI: bootstrap over "
        "patients, 2000 draws):", "",
        *CV_HEADER, *cv_lines, "",
        f"Timing with folds {find_folds(args.model)} ensembled, torch threads {args.threads}, median of {args.repeats} "
        f"after a warm-up; CPU s = this process's CPU time, all threads. Load average while measuring "
        f"{load[0]:.1f} / {load[1]:.1f} on 2 cores (about 2 means one busy job: this one).", "",
        "Crop: the default 48 x 48 x 40 mm around the point (4 sliding windows a fold), crop, predict and paste back. "
        "'PyTorch's own convolutions': the same model without devices.use_onednn_convolutions (PyTorch's im2col "
        "kernel for these thin layers at a batch of one); 'same mask': whether both give the same mask. Whole stack: "
        "nnU-Net on the whole series, as a user without a click would run it (with oneDNN convolutions too).", "",
        "| series | size (x y z) | nodule diam. mm (readers) | mask mm3 | equiv. diam. mm | "
        "crop wall / CPU s | PyTorch's own convolutions, wall / CPU s | same mask | "
        "whole stack, one fold, wall / CPU s | whole 512x512x300 CT, all folds, CPU s (extrapolated) |",
        "|---|---|---|---|---|---|---|---|---|---|", *time_rows, ""])
    # Keep any hand-written preamble above the measured section.
    previous = args.out.read_text() if args.out.is_file() else ""
    preamble = previous.split(MARKER)[0] if MARKER in previous else previous
    args.out.write_text(preamble + text)
    write_stamp(args.out, [args.data, args.ct / "nodules.json"])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
