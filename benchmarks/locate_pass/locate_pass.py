"""Does finding the nodule with one nnU-Net fold, before the whole ensemble segments it re-centred, change the result?

    nnUNet_compile=False python benchmarks/locate_pass/locate_pass.py --voi-patients 30

Criterion (README.md, written before the run): per click, the segmentation when the first pass (the one that finds
the nodule, whose crop the second pass is centred on) uses fold 0 alone against the same with all 5 folds (the
engine before this change). Met when the mean Dice against the readers' reference mask differs by at most 0.005,
the nodule gate decides the same for at least 99 % of clicks, and the median time per click is lower.

Clicks: for each nodule, its centre and the click moved 3 mm along +x (kept only inside the reference mask), on a
seeded sample of lidc-voi patients (every nodule of each) and the 3 lidc-ct nodules (whole real CTs; there the
centre click's all-fold mask stands in for the reference). The shipped segmentation ensemble saw most lidc-voi
patients in training (4 of its 5 folds), so Dice against the reference is optimistic for both; the comparison of
the two, not the level, is the question. Writes locate_pass.json and .md beside this file, and the stamp.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import BENCHMARKS, data_path, write_stamp  # noqa: E402

sys.path.insert(0, str(BENCHMARKS / "click_stability"))
from click_stability import inside  # noqa: E402  (is the point in the reference mask)
from LungNoduleExplainLib.metrics import dice  # noqa: E402

HERE = Path(__file__).resolve().parent
STEP_MM = 3.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="lidc-voi", help="VOI folder under LUNGNODULE_DATA (default %(default)s)")
    parser.add_argument("--ct", default="lidc-ct", help="whole-CT folder under LUNGNODULE_DATA (default %(default)s)")
    parser.add_argument("--voi-patients", type=int, default=30, help="lidc-voi patients sampled (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "locate_pass", help="output path without suffix")
    return parser.parse_args(argv)


def segment(segmenter, ct: sitk.Image, point_lps: np.ndarray) -> tuple:  # noqa: ANN001
    from LungNoduleExplainLib.nodule_check import segment_and_check

    start = time.perf_counter()
    seg, check = segment_and_check(segmenter, ct, [float(v) for v in point_lps])
    return seg.mask, bool(check.found), time.perf_counter() - start


def compare(segmenters: dict, ct: sitk.Image, centre: np.ndarray, reference: sitk.Image | None, case: str) -> list:
    """Rows for the centre click and the moved one (if it stays inside the reference)."""
    rows, readers = [], reference is not None
    for name, point in (("centre", centre), ("moved 3 mm +x", centre + np.array([STEP_MM, 0.0, 0.0]))):
        if name != "centre" and not inside(reference, point):
            continue
        masks, found, seconds = {}, {}, {}
        for scheme, segmenter in segmenters.items():
            masks[scheme], found[scheme], seconds[scheme] = segment(segmenter, ct, point)
        if reference is None:  # a whole CT: the centre click's all-fold mask is the reference
            reference = masks["all folds locate"]
        rows.append({"case": case, "click": name, "reference": "readers" if readers else "all-fold centre mask",
                     "dice_to_reference": {s: round(dice(m, reference), 4) for s, m in masks.items()},
                     "dice_between": round(dice(*masks.values()), 4),
                     "identical": bool(np.array_equal(*(sitk.GetArrayViewFromImage(m) for m in masks.values()))),
                     "gate_found": found, "seconds": {s: round(v, 3) for s, v in seconds.items()}})
        print(case, name, rows[-1]["dice_to_reference"], rows[-1]["seconds"], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from LungNoduleExplainLib.bundle import default_bundle_path
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter
    from LungNoduleExplainLib.volume import read_ct

    model = default_bundle_path() / "segmentation"
    # recent_crops=0: every click computed, so that the times compare the schemes, not the segmenter's memory
    segmenters = {"all folds locate": NoduleSegmenter(model, device="cpu", recent_crops=0, locate_folds=None),
                  "fold 0 locates": NoduleSegmenter(model, device="cpu", recent_crops=0, locate_folds=1)}
    voi, ct_dir = data_path(args.data), data_path(args.ct)
    with (voi / "nodules.csv").open(newline="", encoding="utf-8-sig") as fh:
        table = list(csv.DictReader(fh))
    patients = sorted({r["patient_id"] for r in table})
    picked = set(np.random.default_rng(args.seed).permutation(patients)[:args.voi_patients])
    rows = []
    for nodule in json.loads((ct_dir / "nodules.json").read_text()):
        ct = read_ct(ct_dir / nodule["patient_id"] / "dicom")
        rows += compare(segmenters, ct, np.asarray(nodule["centroid_lps_mm"], float), None, nodule["patient_id"])
    for r in (r for r in table if r["patient_id"] in picked):
        centre = np.asarray([float(r[f"center_{a}_mm"]) for a in "xyz"])
        rows += compare(segmenters, sitk.ReadImage(str(voi / r["image"])), centre,
                        sitk.ReadImage(str(voi / r["mask"])), r["case_id"])
    summary = summarise(rows, list(segmenters))
    args.out.with_suffix(".json").write_text(json.dumps({"summary": summary, "clicks": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summary) + "\n")
    write_stamp(args.out.with_suffix(".json"), [voi, ct_dir, model / "plans.json"])
    print(markdown(summary))
    return 0


def summarise(rows: list[dict], schemes: list[str]) -> dict:
    readers = [r for r in rows if r["reference"] == "readers"]
    old, new = schemes
    mean = {s: round(statistics.fmean(r["dice_to_reference"][s] for r in readers), 4) for s in schemes}
    same_gate = sum(r["gate_found"][old] == r["gate_found"][new] for r in rows)
    median_s = {s: round(statistics.median(r["seconds"][s] for r in rows), 3) for s in schemes}
    return {"clicks": len(rows), "clicks_with_readers_mask": len(readers),
            "nodules": len({r["case"] for r in rows}),
            "mean_dice_to_readers": mean, "dice_difference": round(mean[new] - mean[old], 4),
            "identical_masks": sum(r["identical"] for r in rows),
            "mean_dice_between": round(statistics.fmean(r["dice_between"] for r in rows), 4),
            "min_dice_between": min(r["dice_between"] for r in rows),
            "same_gate_decision": same_gate, "median_seconds": median_s,
            "criterion_met": bool(abs(mean[new] - mean[old]) <= 0.005 and same_gate >= 0.99 * len(rows)
                                  and median_s[new] < median_s[old])}


def markdown(s: dict) -> str:
    old, new = list(s["mean_dice_to_readers"])
    return "\n".join([
        f"| | {old} (before) | {new} |", "|---|---|---|",
        f"| mean Dice to the readers' mask ({s['clicks_with_readers_mask']} clicks) | "
        f"{s['mean_dice_to_readers'][old]:.4f} | {s['mean_dice_to_readers'][new]:.4f} |",
        f"| median seconds per click (2 CPU threads) | {s['median_seconds'][old]:.3f} | "
        f"{s['median_seconds'][new]:.3f} |",
        "",
        f"{s['clicks']} clicks on {s['nodules']} nodules: identical masks {s['identical_masks']}, Dice between the "
        f"two mean {s['mean_dice_between']:.4f} (lowest {s['min_dice_between']:.4f}), same gate decision "
        f"{s['same_gate_decision']} of {s['clicks']}. Criterion met: {s['criterion_met']}."])


if __name__ == "__main__":
    sys.exit(main())
