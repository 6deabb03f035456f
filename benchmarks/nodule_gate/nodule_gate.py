"""Benchmark of the "is there a nodule at the click?" gate (LungNoduleExplainLib.nodule_check); see README.md.

    python benchmarks/nodule_gate/nodule_gate.py --voi lidc-voi --ct-dir lidc-ct \
        --oof oof/nnunet

(a) real nodules, lidc-voi: every nodule clicked at its table centre (segmentation.metrics.seed_point) and at
    that centre moved 3 mm (else 2 mm) along +-x, +-y, +-z, kept where the moved point is inside the reference
    mask. The segmentation is the out-of-fold nnU-Net probability (benchmarks/out_of_fold/make_oof.py: the one fold
    model that never saw the patient, predicted at the centre) with the segmenter's own component choice
    (predict.select_component at the click) and its field (predict.crop_around at the click).
(b) off-nodule clicks on the real CTs (off_nodule_points.csv, placed by off_nodule_points.py's stated rule), and
(c) the real CTs' own nodules clicked at the centroid and moved 3 mm the same way (kept inside the image): both
    through the engine's own path, nodule_check.segment_and_check (second, larger field included), with the
    patient's held-out fold for (c) and the shipped five-fold model, as a user gets it, for (b).
Writes results.json and results.md beside this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
import torch

from LungNoduleExplainLib.atomic import write_json_atomic, write_text_atomic
from LungNoduleExplainLib.bundle import default_bundle_path
from LungNoduleExplainLib.nodule_check import (CLICK_TOLERANCE_MM, MAX_NODULE_DIAMETER_MM, MIN_NODULE_DIAMETER_MM,
                                               NoduleCheck, segment_and_check)
from LungNoduleExplainLib.segmentation.metrics import seed_point
from LungNoduleExplainLib.segmentation.predict import (DEFAULT_CROP_MM, DEFAULT_THRESHOLD, NoduleSegmenter,
                                                       crop_around, select_component)
from LungNoduleExplainLib.volume import read_ct
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, write_stamp  # noqa: E402

HERE = Path(__file__).resolve().parent
MOVES_MM = (3.0, 2.0)  # the first that stays inside the reference mask
DIRECTIONS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def kind_of(check: NoduleCheck) -> str:
    """'accepted', 'accepted with warning', or which rule refused."""
    if check.found:
        return "accepted with warning" if check.warnings else "accepted"
    if check.distance_mm is None:
        return "refused: nothing segmented"
    if check.distance_mm > CLICK_TOLERANCE_MM:
        return "refused: click off the component"
    if check.longest_diameter_mm < MIN_NODULE_DIAMETER_MM:
        return "refused: smaller than 3 mm"
    if check.field_edges:
        return "refused: runs out of the field"
    return "refused: longer than 60 mm"


def inside(mask: np.ndarray, image: sitk.Image, point: np.ndarray) -> bool:
    index = np.round(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point])).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(image.GetSize())):
        return False
    return bool(mask[index[2], index[1], index[0]])


def clicks_in(mask: np.ndarray, image: sitk.Image, centre: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The centre and, per direction, the centre moved by the first of MOVES_MM that lands in the mask."""
    clicks = [("centre", centre)]
    for direction in DIRECTIONS:
        for move in MOVES_MM:
            point = centre + move * np.asarray(direction, dtype=float)
            if inside(mask, image, point):
                clicks.append((f"{move:g} mm {direction}", point))
                break
    return clicks


class MapSegmenter:
    """NoduleSegmenter's segment() on a precomputed probability map: the component choice at the click
    (select_component) and the field (crop_around) of the asked size, so that segment_and_check runs unchanged.
    The map itself was predicted once in the default field at the nodule's centre (make_oof.py)."""

    crop_mm = DEFAULT_CROP_MM

    def __init__(self, probability: sitk.Image) -> None:
        self.probability = probability
        self.prob = sitk.GetArrayFromImage(probability)

    def segment(self, image: sitk.Image, point, crop_mm=None) -> SimpleNamespace:  # noqa: ANN001
        spacing_zyx = np.asarray(image.GetSpacing())[::-1]
        click = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))[::-1]
        component = select_component(self.prob >= DEFAULT_THRESHOLD, click, spacing_zyx).astype(np.uint8)
        mask = sitk.GetImageFromArray(component)
        mask.CopyInformation(image)
        _, geometry, _ = crop_around(image, point, crop_mm or self.crop_mm)
        return SimpleNamespace(mask=mask, probability=self.probability, crop=geometry)


def check_with_map(image: sitk.Image, probability: sitk.Image, point: np.ndarray) -> NoduleCheck:
    """The engine's segment_and_check, with the segmenter replaced by the precomputed map."""
    return segment_and_check(MapSegmenter(probability), image, point)[1]


def real_nodules(voi: Path, oof: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(voi / "nodules.csv", newline="") as handle:
        table = list(csv.DictReader(handle))[:limit]
    for n, row in enumerate(table, start=1):
        image = sitk.ReadImage(str(voi / row["image"]))  # read_ct would refuse a few lung-only VOIs
        reference = sitk.ReadImage(str(voi / row["mask"]))
        probability = sitk.ReadImage(str(oof / f"{row['case_id']}.nii.gz"))
        record = type("Record", (), {"center_lps": tuple(float(row[f"center_{a}_mm"]) for a in "xyz"),
                                     "case_id": row["case_id"], "image_path": voi / row["image"]})
        centre = np.asarray(seed_point(record, image, reference), dtype=float)
        mask = sitk.GetArrayFromImage(reference) > 0
        for label, point in clicks_in(mask, image, centre):
            check = check_with_map(image, probability, point)
            rows.append({"case_id": row["case_id"], "patient_id": row["patient_id"], "click": label,
                         "diameter_mm": float(row["diameter_mm"]), "outcome": kind_of(check), "reason": check.reason,
                         "warnings": list(check.warnings), "nodule_check": check.to_json()})
        if n % 50 == 0:
            print(f"(a) {n}/{len(table)} nodules", file=sys.stderr, flush=True)
    return rows


def real_ct_clicks(ct_dir: Path, bundle: Path, points_csv: Path) -> tuple[list[dict], list[dict]]:
    fold_of_case = json.loads((bundle / "segmentation" / "cross_validation.json").read_text())["fold_of_case"]
    shipped = NoduleSegmenter(bundle / "segmentation", device="cpu")
    nodules = json.loads((ct_dir / "nodules.json").read_text())
    cts = {n["patient_id"]: read_ct(ct_dir / n["patient_id"] / "dicom") for n in nodules}
    off = []
    with open(points_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            point = [float(row[k]) for k in ("x_lps", "y_lps", "z_lps")]
            _, check = segment_and_check(shipped, cts[row["patient_id"]], point)
            off.append({**row, "outcome": kind_of(check), "reason": check.reason, "warnings": list(check.warnings),
                        "nodule_check": check.to_json()})
    true = []
    for nodule in nodules:
        ct, patient = cts[nodule["patient_id"]], nodule["patient_id"]
        folds = sorted({int(f) for case, f in fold_of_case.items() if case.startswith(patient + "_")})
        segmenter = NoduleSegmenter(bundle / "segmentation", folds=folds[:1], device="cpu") if folds else shipped
        centre = np.asarray(nodule["centroid_lps_mm"], dtype=float)
        body = np.ones(sitk.GetArrayViewFromImage(ct).shape, bool)  # no reference mask: keep points in the image
        for label, point in clicks_in(body, ct, centre)[:1] + [
                (f"3 mm {d}", centre + 3.0 * np.asarray(d, float)) for d in DIRECTIONS
                if inside(body, ct, centre + 3.0 * np.asarray(d, float))]:
            _, check = segment_and_check(segmenter, ct, point)
            true.append({"patient_id": patient, "click": label, "fold": folds[:1] or "all",
                         "outcome": kind_of(check), "reason": check.reason, "warnings": list(check.warnings),
                         "nodule_check": check.to_json()})
    return off, true


FACTS = ("distance_mm", "longest_diameter_mm", "volume_edges")


def lean(row: dict) -> dict:
    """A click's row for results.json: its outcome and the facts the rules read (the full check where refused)."""
    if row["outcome"].startswith("refused"):
        return row
    return {**{k: v for k, v in row.items() if k not in ("nodule_check", "reason", "warnings", "patient_id")},
            **{k: row["nodule_check"][k] for k in FACTS}}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def rate(rows: list[dict], refused: bool) -> dict:
    n = len(rows)
    k = sum(r["outcome"].startswith("refused") == refused for r in rows)
    low, high = wilson_interval(k, n) if n else (float("nan"), float("nan"))
    return {"n": n, "count": k, "rate": k / n if n else float("nan"), "ci95": [low, high]}


def summarise(voi_rows: list[dict], off: list[dict], true: list[dict]) -> dict:
    centre = [r for r in voi_rows if r["click"] == "centre"]
    moved = [r for r in voi_rows if r["click"] != "centre"]
    return {
        "a_false_refusals_all_clicks": rate(voi_rows, True), "a_false_refusals_centre": rate(centre, True),
        "a_false_refusals_moved": rate(moved, True), "a_outcomes": dict(Counter(r["outcome"] for r in voi_rows)),
        "a_nodules": len(centre),
        "a_nodules_with_any_refusal": len({r["case_id"] for r in voi_rows if r["outcome"].startswith("refused")}),
        "a_refused_by_diameter_mm": {b: sum(1 for r in voi_rows if r["outcome"].startswith("refused")
                                            and lo <= r["diameter_mm"] < hi)
                                     for b, (lo, hi) in {"<6": (0, 6), "6-10": (6, 10), ">=10": (10, 99)}.items()},
        "b_off_nodule_answered_silently": sum(r["outcome"] == "accepted" for r in off),
        "b_off_nodule_accepted_with_warning": sum(r["outcome"] == "accepted with warning" for r in off),
        "b_off_nodule_refused": rate(off, True), "b_outcomes": dict(Counter(r["outcome"] for r in off)),
        "c_real_ct_nodule_clicks": rate(true, True), "c_outcomes": dict(Counter(r["outcome"] for r in true)),
        "b_off_nodule_accepted_by_warning": dict(Counter(" + ".join(w.split(" (")[0].split(":")[0]
                                                                    for w in r["warnings"]) or "no warning"
                                                         for r in off if r["outcome"].startswith("accepted"))),
        "rules": {"click_tolerance_mm": CLICK_TOLERANCE_MM, "min_nodule_diameter_mm": MIN_NODULE_DIAMETER_MM,
                  "max_nodule_diameter_mm": MAX_NODULE_DIAMETER_MM},
    }


def markdown(summary: dict, voi_rows: list[dict], off: list[dict], true: list[dict], command: str) -> str:
    def pct(r: dict) -> str:
        low, high = (100 * v for v in r["ci95"])
        return f"{r['count']}/{r['n']} = {100 * r['rate']:.2f}% (95% CI {low:.2f}-{high:.2f}%)"

    lines = ["# Nodule gate: measured results", "", f"Command: `{command}`", "",
             "Criterion (README.md, written before the run): false refusals on real nodules <= 1%; off-nodule "
             "clicks answered silently = 0.", "",
             "## (a) Real nodules, lidc-voi, out-of-fold nnU-Net", "",
             f"- nodules: {summary['a_nodules']}; clicks: {summary['a_false_refusals_all_clicks']['n']}",
             f"- false refusals, all clicks: {pct(summary['a_false_refusals_all_clicks'])}",
             f"- false refusals, centre clicks: {pct(summary['a_false_refusals_centre'])}",
             f"- false refusals, moved clicks: {pct(summary['a_false_refusals_moved'])}",
             f"- nodules with at least one refused click: {summary['a_nodules_with_any_refusal']}",
             f"- refused clicks by the nodule's table diameter: {summary['a_refused_by_diameter_mm']}",
             f"- outcomes: {summary['a_outcomes']}", "", "Refused clicks:", "",
             "| case | click | diameter mm | outcome | reason |", "|---|---|---|---|---|"]
    lines += [f"| {r['case_id']} | {r['click']} | {r['diameter_mm']:.1f} | {r['outcome']} | {r['reason']} |"
              for r in voi_rows if r["outcome"].startswith("refused")]
    lines += ["", "## (b) Off-nodule clicks on the real CTs (shipped model)", "",
              f"- answered silently: {summary['b_off_nodule_answered_silently']} of {len(off)}",
              f"- accepted with a warning: {summary['b_off_nodule_accepted_with_warning']}",
              f"- accepted, by warning: {summary['b_off_nodule_accepted_by_warning']}",
              f"- refused: {pct(summary['b_off_nodule_refused'])}", "",
              "| patient | kind | HU | outcome | reason / warning |", "|---|---|---|---|---|"]
    lines += [f"| {r['patient_id']} | {r['kind']} | {r['hu']} | {r['outcome']} | "
              f"{r['reason'] if r['outcome'].startswith('refused') else '; '.join([r['reason'], *r['warnings']])} |"
              for r in off]
    lines += ["", "## (c) The real CTs' own nodules (held-out fold)", "",
              f"- refused: {pct(summary['c_real_ct_nodule_clicks'])}", "",
              "| patient | click | outcome | reason / warning |", "|---|---|---|---|"]
    lines += [f"| {r['patient_id']} | {r['click']} | {r['outcome']} | "
              f"{'; '.join([r['reason'], *r['warnings']])} |" for r in true]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voi", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--ct-dir", type=data_path, default=data_path("lidc-ct"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--oof", type=runs_path, default=runs_path("oof/nnunet"), help="make_oof.py's nnunet folder, under $LUNGNODULE_RUNS")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--points", type=Path, default=HERE / "off_nodule_points.csv")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--limit", type=int, default=None, help="first N lidc-voi nodules only (a quick check)")
    args = parser.parse_args(argv)
    os.environ.setdefault("nnUNet_compile", "False")
    torch.set_num_threads(1)
    voi_rows = real_nodules(args.voi, args.oof, args.limit)
    off, true = real_ct_clicks(args.ct_dir, args.model or default_bundle_path(), args.points)
    summary = summarise(voi_rows, off, true)
    command = "python benchmarks/nodule_gate/nodule_gate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json_atomic(args.out / "results.json", {"summary": summary, "command": command,
                                                  "voi_clicks": [lean(r) for r in voi_rows],
                                                  "off_nodule_clicks": off, "real_ct_nodule_clicks": true}, indent=None)
    write_text_atomic(args.out / "results.md", markdown(summary, voi_rows, off, true, command))
    write_stamp(args.out / "results.md", [args.voi, args.ct_dir / "nodules.json", args.points,
                                        args.model or default_bundle_path()])
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
