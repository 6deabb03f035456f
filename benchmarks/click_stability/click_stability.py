"""Click stability: does moving the click 3 mm inside a real nodule change the answer? (issue 19, item 5)

    nnUNet_compile=False python benchmarks/click_stability/click_stability.py --voi-sample 60 --diagonals

Criterion (README.md, written before any run): for every click moved `--step-mm` (3 mm) along each of the 6 axis
directions (and with --diagonals the 8 cube diagonals) from the nodule's centre, kept only where the moved point
is still inside the nodule, |malignancy(moved) - malignancy(centre)| <= 0.05 and no output's call
(probability >= threshold) differs from the centre click's.

Nodules: the 3 lidc-ct nodules (real DICOM, centre = nodules.json 'centroid_lps_mm', "inside" = the nnU-Net mask
of the centre click) and a patient-stratified sample of lidc-voi nodules (one nodule per sampled patient, equal
numbers per nnU-Net cross-validation fold; centre = nodules.csv center_*_mm, "inside" = the reference mask),
segmented by the nnU-Net fold that never saw the patient (segmentation/cross_validation.json 'fold_of_case').
The classifier is the bundle's whole ensemble (four of its five members saw each lidc-voi patient in training;
stability, not accuracy, is measured). A click the engine refuses (any LungNoduleExplainError, e.g. a gate
answering "no nodule") is counted apart, with its message. Writes click_stability.json and .md beside this file.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import DATA_ROOT, write_stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MAX_DELTA = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_ROOT,
                        help="folder holding lidc-ct/ and lidc-voi/ (default %(default)s)")
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the shipped one)")
    parser.add_argument("--voi-sample", type=int, default=60, help="lidc-voi patients sampled (0: none)")
    parser.add_argument("--no-ct", action="store_true", help="skip the 3 lidc-ct nodules")
    parser.add_argument("--step-mm", type=float, default=3.0, help="how far the click moves (mm)")
    parser.add_argument("--diagonals", action="store_true", help="also the 8 cube diagonals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient sample")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="a calibration.json (calibration.py) to apply to the raw probabilities as well, e.g. "
                             "one not yet in the bundle: its malignancy changes are reported beside")
    parser.add_argument("--no-recentre", action="store_true",
                        help="segment once, the crop centred on the click (the engine before the second pass)")
    parser.add_argument("--out", type=Path, default=HERE / "click_stability",
                        help="output path without suffix (.json and .md are written)")
    return parser.parse_args(argv)


def directions(diagonals: bool) -> dict[str, np.ndarray]:
    """Unit vectors in LPS: +-x (L/R), +-y (P/A), +-z (S/I), and optionally the 8 normalised cube diagonals."""
    out = {}
    for axis, (plus, minus) in enumerate((("L", "R"), ("P", "A"), ("S", "I"))):
        v = np.zeros(3)
        v[axis] = 1.0
        out[plus], out[minus] = v, -v
    if diagonals:
        for signs in itertools.product((1, -1), repeat=3):
            name = "".join(("L" if signs[0] > 0 else "R", "P" if signs[1] > 0 else "A", "S" if signs[2] > 0 else "I"))
            out[name] = np.asarray(signs, dtype=float) / np.sqrt(3.0)
    return out


def inside(mask, point_lps: np.ndarray) -> bool:  # noqa: ANN001
    """Whether the nearest voxel of `mask` (SimpleITK, non-zero = nodule) to the LPS point is in the nodule."""
    import SimpleITK as sitk

    index = np.round(mask.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps])).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(mask.GetSize())):
        return False
    return bool(sitk.GetArrayViewFromImage(mask)[index[2], index[1], index[0]] > 0)


def click(analyzer, ct, point_lps: np.ndarray) -> dict:  # noqa: ANN001
    """One analysis: probabilities and calls per output, or the refusal's type and message."""
    from LungNoduleExplainLib.errors import LungNoduleExplainError

    start = time.perf_counter()
    try:
        finding = analyzer.analyze(ct, [float(v) for v in point_lps], space="lps")
    except LungNoduleExplainError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - start, 2)}
    raw = {o.name: getattr(o, "raw_probability", None) for o in finding.outputs}
    return {"probability": {o.name: round(float(o.probability), 5) for o in finding.outputs},
            "raw": {k: round(float(v), 5) for k, v in raw.items() if v is not None},
            "positive": {o.name: bool(o.positive) for o in finding.outputs},
            "diameter_mm": round(float(finding.diameter_mm), 2), "warnings": list(finding.warnings),
            "seconds": round(time.perf_counter() - start, 2), "finding": finding}


def nodule_moves(analyzer, ct, centre_lps: np.ndarray, reference, moves: dict[str, np.ndarray],  # noqa: ANN001
                 step_mm: float, diagnosis: str) -> dict:
    """The centre click, then every move whose point stays inside the nodule; `reference` None = use the centre
    finding's own segmentation."""
    centre = click(analyzer, ct, centre_lps)
    finding = centre.pop("finding", None)
    row = {"centre_lps_mm": [round(float(v), 2) for v in centre_lps], "centre": centre, "moves": []}
    if finding is None:
        return row
    mask = reference if reference is not None else finding.segmentation
    row["reference"] = "reference mask" if reference is not None else "nnU-Net mask of the centre click"
    row["centre_inside_reference"] = inside(mask, centre_lps)
    # a call whose probability lies within MAX_DELTA of its threshold can flip within the allowed change
    row["near_threshold"] = sorted(o.name for o in finding.outputs if abs(o.probability - o.threshold) <= MAX_DELTA)
    for name, unit in moves.items():
        point = centre_lps + step_mm * unit
        if not inside(mask, point):
            row["moves"].append({"direction": name, "kept": False})
            continue
        moved = click(analyzer, ct, point)
        moved.pop("finding", None)
        entry = {"direction": name, "kept": True, **moved}
        if "refused" not in moved:
            entry["delta"] = {k: round(moved["probability"][k] - centre["probability"][k], 5)
                              for k in centre["probability"]}
            entry["flips"] = sorted(k for k in centre["positive"] if moved["positive"][k] != centre["positive"][k])
        row["moves"].append(entry)
    row["diagnosis"] = diagnosis
    return row


def ct_nodules(args: argparse.Namespace, moves: dict[str, np.ndarray], diagnosis: str) -> list[dict]:
    from LungNoduleExplainLib.analysis import Analyzer
    from LungNoduleExplainLib.volume import read_ct

    from LungNoduleExplainLib.bundle import load_bundle
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter

    bundle = load_bundle(args.model, device="cpu")
    segmenter = NoduleSegmenter(bundle.segmentation_dir, device="cpu", recentre=not args.no_recentre)
    analyzer = Analyzer(bundle, device="cpu", segmenter=segmenter)
    ct_dir = args.data / "lidc-ct"
    rows = []
    for nodule in json.loads((ct_dir / "nodules.json").read_text()):
        ct = read_ct(ct_dir / nodule["patient_id"] / "dicom")
        row = nodule_moves(analyzer, ct, np.asarray(nodule["centroid_lps_mm"], float), None, moves,
                           args.step_mm, diagnosis)
        rows.append({"set": "lidc-ct", "case": nodule["patient_id"], "patient": nodule["patient_id"], **row})
        print(summary_line(rows[-1]), flush=True)
    return rows


def voi_sample(table: list[dict], fold_of_case: dict[str, int], n: int, seed: int) -> list[dict]:
    """One nodule per patient, about n / 5 patients per nnU-Net fold (seeded)."""
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[dict]] = {}
    for r in table:
        if r["case_id"] in fold_of_case:
            by_patient.setdefault(r["patient_id"], []).append(r)
    folds = sorted(set(fold_of_case.values()))
    picked = []
    for k, fold in enumerate(folds):
        patients = sorted(p for p, rs in by_patient.items() if fold_of_case[rs[0]["case_id"]] == fold)
        count = n // len(folds) + (1 if k < n % len(folds) else 0)
        for p in rng.permutation(patients)[:count]:
            rows = by_patient[str(p)]
            picked.append(rows[int(rng.integers(len(rows)))])
    return picked


def voi_nodules(args: argparse.Namespace, moves: dict[str, np.ndarray], diagnosis: str) -> list[dict]:
    import SimpleITK as sitk

    from LungNoduleExplainLib.analysis import Analyzer
    from LungNoduleExplainLib.bundle import load_bundle
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter

    voi = args.data / "lidc-voi"
    with (voi / "nodules.csv").open(newline="", encoding="utf-8-sig") as fh:
        table = list(csv.DictReader(fh))
    bundle = load_bundle(args.model, device="cpu")
    fold_of_case = json.loads((bundle.segmentation_dir / "cross_validation.json").read_text())["fold_of_case"]
    sample = voi_sample(table, fold_of_case, args.voi_sample, args.seed)
    rows = []
    for fold in sorted({fold_of_case[r["case_id"]] for r in sample}):
        segmenter = NoduleSegmenter(bundle.segmentation_dir, folds=(fold,), device="cpu",
                                    recentre=not args.no_recentre)
        analyzer = Analyzer(bundle, device="cpu", segmenter=segmenter)
        for r in (r for r in sample if fold_of_case[r["case_id"]] == fold):
            ct = sitk.ReadImage(str(voi / r["image"]))
            mask = sitk.ReadImage(str(voi / r["mask"]))
            centre = np.asarray([float(r[f"center_{a}_mm"]) for a in "xyz"])
            row = nodule_moves(analyzer, ct, centre, mask, moves, args.step_mm, diagnosis)
            rows.append({"set": "lidc-voi", "case": r["case_id"], "patient": r["patient_id"],
                         "nnunet_fold": fold, **row})
            print(summary_line(rows[-1]), flush=True)
    return rows


def summary_line(row: dict) -> str:
    if "refused" in row["centre"]:
        return f"{row['case']}: centre refused ({row['centre']['refused'][:100]})"
    deltas = [abs(m["delta"][row["diagnosis"]]) for m in row["moves"] if "delta" in m]
    kept = sum(m["kept"] for m in row["moves"])
    return (f"{row['case']}: p={row['centre']['probability'][row['diagnosis']]:.3f} kept {kept}/{len(row['moves'])}"
            f" max|d|={max(deltas, default=0.0):.3f}"
            f" flips={sum(len(m['flips']) for m in row['moves'] if 'flips' in m)}")


def add_scale(rows: list[dict], name: str, calibrate) -> None:  # noqa: ANN001
    """Each answered click gets `name`: {output: calibrate(output, raw probability)}."""
    for r in rows:
        for entry in [r["centre"], *r["moves"]]:
            if entry.get("raw"):
                entry[name] = {k: round(float(calibrate(k, v)), 5) for k, v in entry["raw"].items()}


def scale_summary(subset: list[dict], diagnosis: str, key: str) -> dict | None:
    """Share within MAX_DELTA, median, p95 and max |change| of the diagnosis on the probabilities under `key`."""
    deltas = np.asarray([abs(m[key][diagnosis] - r["centre"][key][diagnosis]) for r in subset
                         if key in r["centre"] for m in r["moves"] if key in m])
    if not len(deltas):
        return None
    return {"answered": len(deltas), "share_within": round(float(np.mean(deltas <= MAX_DELTA)), 4),
            "median_abs_delta": round(float(np.median(deltas)), 4),
            "p95_abs_delta": round(float(np.percentile(deltas, 95)), 4), "max_abs_delta": round(float(deltas.max()), 4)}


def summarise(rows: list[dict], diagnosis: str, outputs: list[str]) -> dict:
    """Share of answered moves within MAX_DELTA, max delta, flips per output, refusals; per set and overall."""
    out = {}
    for name, subset in (("lidc-ct", [r for r in rows if r["set"] == "lidc-ct"]),
                         ("lidc-voi", [r for r in rows if r["set"] == "lidc-voi"]), ("all", rows)):
        if not subset:
            continue
        moves = [m for r in subset if "refused" not in r["centre"] for m in r["moves"]]
        kept = [m for m in moves if m["kept"]]
        answered = [m for m in kept if "delta" in m]
        deltas = np.asarray([abs(m["delta"][diagnosis]) for m in answered])
        flips = {o: sum(o in m["flips"] for m in answered) for o in outputs}
        out[name] = {
            "nodules": len(subset), "centre_refused": sum("refused" in r["centre"] for r in subset),
            "moves_tried": len(moves), "moves_inside": len(kept), "moves_refused": len(kept) - len(answered),
            "moves_answered": len(answered),
            "share_within": round(float(np.mean(deltas <= MAX_DELTA)), 4) if len(deltas) else None,
            "median_abs_delta": round(float(np.median(deltas)), 4) if len(deltas) else None,
            "p95_abs_delta": round(float(np.percentile(deltas, 95)), 4) if len(deltas) else None,
            "max_abs_delta": round(float(deltas.max()), 4) if len(deltas) else None,
            "flips": flips, "moves_with_any_flip": sum(bool(m["flips"]) for m in answered),
            "flips_of_near_threshold_calls": sum(len(set(m["flips"]) & set(r["near_threshold"])) for r in subset
                                                 if "refused" not in r["centre"] for m in r["moves"] if "flips" in m),
            "flips_total": sum(flips.values()),
            "nodules_all_within_no_flip": sum(
                all("delta" in m and abs(m["delta"][diagnosis]) <= MAX_DELTA and not m["flips"]
                    for m in r["moves"] if m["kept"]) for r in subset if "refused" not in r["centre"]),
        }
        out[name]["scales"] = {key: scale_summary(subset, diagnosis, key)
                               for key in ("probability", "raw", "calibration_file")}
        seconds = [m["seconds"] for m in answered] + [r["centre"]["seconds"] for r in subset]
        out[name]["median_click_s"] = round(float(np.median(seconds)), 2)
        out[name]["met"] = bool(len(deltas) and out[name]["share_within"] == 1.0
                                and out[name]["moves_with_any_flip"] == 0)
    return out


def write_markdown(path: Path, result: dict) -> None:
    lines = [f"# Click stability ({result['generated_utc']})", "",
             f"Command: `{result['command']}`", "",
             f"Tree: {result['commit']}{' (uncommitted changes)' if result['dirty'] else ''}; bundle "
             f"{result['bundle']} (calibration.json present: {result['calibrated']}); step {result['step_mm']} mm, "
             f"{len(result['directions'])} directions ({', '.join(result['directions'])}); "
             f"{result['seconds']:.0f} s on {result['threads']} torch thread(s); segmentation "
             + ("re-centred on the nodule (second pass)" if result["recentre"] else "once, crop centred on the click")
             + "; median click " + ", ".join(f"{n} {s['median_click_s']} s" for n, s in result["summary"].items())
             + " (wall time on a shared machine).", "",
             f"Criterion: every kept move has |delta malignancy| <= {MAX_DELTA} and flips no call.", "",
             "| set | nodules | centre refused | moves inside | refused | answered | share |d|<=0.05 | median |d| "
             "| p95 |d| | max |d| | moves with a flip | met |", "|" + "---|" * 12]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['nodules']} | {s['centre_refused']} | {s['moves_inside']} | "
                     f"{s['moves_refused']} | {s['moves_answered']} | {s['share_within']} | {s['median_abs_delta']}"
                     f" | {s['p95_abs_delta']} | {s['max_abs_delta']} | {s['moves_with_any_flip']} | "
                     f"{'yes' if s['met'] else 'no'} |")
    outputs = result["outputs"]
    lines += ["", "Flips per output (moves whose call differs from the centre click's); of all flips, those of calls "
              f"whose centre probability lay within {MAX_DELTA} of the threshold: "
              + "; ".join(f"{n} {s['flips_of_near_threshold_calls']} of {s['flips_total']}"
                          for n, s in result["summary"].items()), "",
              "| set | " + " | ".join(outputs) + " |", "|" + "---|" * (len(outputs) + 1)]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | " + " | ".join(str(s["flips"][o]) for o in outputs) + " |")
    labels = {"probability": "as shown", "raw": "raw network score",
              "calibration_file": f"raw through {result['calibration_file']}"}
    lines += ["", "Malignancy change per scale (answered moves):", "",
              "| set | scale | answered | share |d|<=0.05 | median |d| | p95 |d| | max |d| |", "|" + "---|" * 7]
    for name, s in result["summary"].items():
        for key, v in s["scales"].items():
            if v:
                lines.append(f"| {name} | {labels[key]} | {v['answered']} | {v['share_within']} | "
                             f"{v['median_abs_delta']} | {v['p95_abs_delta']} | {v['max_abs_delta']} |")
    worst = sorted(((abs(m["delta"][result["diagnosis"]]), r["case"], m["direction"], m["flips"])
                    for r in result["nodules"] for m in r["moves"] if "delta" in m), reverse=True)[:10]
    lines += ["", "Largest malignancy changes:", "", "| case | direction | |delta| | flips |", "|---|---|---|---|"]
    lines += [f"| {c} | {d} | {v:.3f} | {', '.join(f) or '-'} |" for v, c, d, f in worst]
    refusals = [(r["case"], m["direction"], m["refused"]) for r in result["nodules"] for m in r["moves"]
                if "refused" in m] + [(r["case"], "centre", r["centre"]["refused"]) for r in result["nodules"]
                                      if "refused" in r["centre"]]
    if refusals:
        lines += ["", "Refused clicks:", ""] + [f"- {c} {d}: {msg[:200]}" for c, d, msg in refusals]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def git_state() -> tuple[str, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, dirty


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("nnUNet_compile", "False")
    import torch

    from LungNoduleExplainLib.atomic import write_json_atomic
    from LungNoduleExplainLib.bundle import load_bundle

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bundle = load_bundle(args.model, device="cpu")
    diagnosis, outputs = bundle.output_names[0], list(bundle.output_names)
    moves = directions(args.diagonals)
    rows = [] if args.no_ct else ct_nodules(args, moves, diagnosis)
    if args.voi_sample > 0:
        rows += voi_nodules(args, moves, diagnosis)
    if args.calibration is not None:
        from LungNoduleExplainLib.calibration import Calibration

        calibration = Calibration.from_dict(json.loads(args.calibration.read_text()), outputs, str(args.calibration))
        add_scale(rows, "calibration_file", lambda k, v: calibration.apply(k, np.asarray([v]))[0])
    commit, dirty = git_state()
    result = {"generated_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python " + shlex.join([os.path.relpath(__file__, REPO)] + (argv or sys.argv[1:])),
              "commit": commit, "dirty": dirty, "bundle": f"{bundle.name} {bundle.version}",
              "calibrated": (bundle.path / "calibration.json").is_file(), "step_mm": args.step_mm,
              "directions": list(moves), "threads": args.threads, "seconds": time.perf_counter() - start,
              "recentre": not args.no_recentre,
              "calibration_file": str(args.calibration) if args.calibration else None,
              "criterion": {"max_abs_delta_malignancy": MAX_DELTA, "flips": 0}, "diagnosis": diagnosis,
              "outputs": outputs, "summary": summarise(rows, diagnosis, outputs), "nodules": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_markdown(args.out.with_suffix(".md"), result)
    write_stamp(args.out.with_suffix(".md"), [args.data / "lidc-voi", args.data / "lidc-ct" / "nodules.json",
                                                 bundle.path])
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
