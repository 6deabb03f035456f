"""Out-of-fold inputs of the shipped bundle on lidc-voi: what calibration, the map benchmark and the gate benchmark
are measured on, so that no figure comes from a network that saw the nodule's patient.

    python benchmarks/out_of_fold/make_oof.py --data lidc-voi --out oof

1. nnU-Net maps: each case segmented by the one fold model of the shipped nnU-Net that never saw its patient
   (`cross_validation.json` 'fold_of_case'), written as OUT/nnunet/<case_id>.nii.gz (float32, the VOI's grid),
   exactly as `train-segmentation` wrote the maps the classifier was trained with (prior "nnunet-oof").
2. Classifier predictions: member k of the shipped ensemble scores the nodules of patient fold k (the fold it did
   not train on: `patient_folds(records, members, seed)` as `train --val-fraction 0` drew them), with those maps as
   its prior. OUT/predictions.csv: case_id, patient_id, fold, diameter_mm, per output `<name>_label`,
   `<name>_oof` (the held-out member's probability) and `<name>_member<k>` (every member's probability; four of
   the five saw the patient in training, so only `_oof` is out of fold).
Reruns replace OUT's files; the nnU-Net maps already present are kept (delete OUT/nnunet to redo them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from LungNoduleExplainLib.atomic import write_text_atomic
from LungNoduleExplainLib.bundle import default_bundle_path, load_bundle
from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.data.voi_table import patient_folds, read_voi_table
from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter
from LungNoduleExplainLib.segmentation.training import write_oof
from LungNoduleExplainLib.networks import predict
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, write_stamp  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--out", type=runs_path, default=runs_path("oof"), help="under $LUNGNODULE_RUNS (default oof)")
    parser.add_argument("--no-recentre", action="store_true",
                        help="segment once with the crop centred on the point, as before issue 19's re-centring: "
                             "the maps the v11 classifier was trained and recorded with (default: as analyze does now)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    bundle_path = args.model or default_bundle_path()
    bundle = load_bundle(bundle_path)
    records = read_voi_table(args.data, bundle.task_set)
    maps = args.out / "nnunet"
    maps.mkdir(parents=True, exist_ok=True)
    fold_of_case = json.loads((bundle_path / "segmentation" / "cross_validation.json").read_text())["fold_of_case"]
    todo = [r for r in records if not (maps / f"{r.case_id}.nii.gz").is_file()]
    for fold in sorted({int(fold_of_case[r.case_id]) for r in todo}):
        segmenter = NoduleSegmenter(bundle_path / "segmentation", folds=(fold,), device="cpu",
                                    recentre=not args.no_recentre)
        cases = [r for r in todo if int(fold_of_case[r.case_id]) == fold]
        for record in tqdm(cases, desc=f"nnU-Net fold {fold}"):
            write_oof(segmenter, [record], maps)
    seed, members = int(bundle.manifest["training"]["seed"]), bundle.members
    folds = patient_folds(records, members, seed)
    patches = build_patch_set(records, bundle.task_set, str(maps), channels=bundle.network.inputs)
    names = bundle.output_names
    member_probs = [predict(m, patches, torch.device("cpu"), bundle.network.inputs) for m in bundle.model.members]
    oof = np.full_like(member_probs[0], np.nan)
    fold_of = np.zeros(len(records), dtype=int)
    for k, fold in enumerate(folds):
        oof[fold] = member_probs[k][fold]
        fold_of[fold] = k
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["case_id", "patient_id", "fold", "diameter_mm"] + [f"{n}_label" for n in names]
                    + [f"{n}_oof" for n in names]
                    + [f"{n}_member{k}" for n in names for k in range(members)])
    for i, r in enumerate(records):
        labels = ["" if np.isnan(v) else int(v) for v in patches.labels[i, :len(names)]]
        writer.writerow([r.case_id, r.patient_id, fold_of[i], r.diameter_mm] + labels
                        + [f"{v:.6f}" for v in oof[i]]
                        + [f"{member_probs[k][i, j]:.6f}" for j in range(len(names)) for k in range(members)])
    write_text_atomic(args.out / "predictions.csv", out.getvalue())
    write_stamp(args.out / "predictions.csv", [args.data, bundle_path])
    print(f"wrote {args.out / 'predictions.csv'} ({len(records)} nodules, {members} member folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
