"""The paper's ablation on our data: patient-grouped k-fold cross-validation of the HESAM variants, the 3D
baselines and the size-only baseline; AUC with a patient-bootstrap 95% CI for every output.

    python benchmarks/ablation/ablation.py [--data lidc-voi] [--out ablation] \
        [--variants hesam hesam-mt hesam-mt-cbam hesam-mt-aag hesam-mt-aag+descriptors vgg resnet densenet] \
        [--folds 5] [--epochs 60]

`+descriptors` adds the nodule descriptors beside each head (the shipped model's configuration). Beside the size-only
baseline the table has "descriptors + logistic regression" (benchmarks/descriptor_baseline/) on the same folds.

Each (variant, fold) is one run of `lungnodule-explain train`'s function, runs.train_run, into OUT/<variant>/run<k>/:
the fold's patients are excluded from it (RunSpec.exclude_patients), the other folds' patients train it, and
--val-fraction of them pick its epoch. The fold's out-of-fold predictions are its bundle's on the fold's nodules,
written to OUT/<variant>/fold<k>.npz as soon as it finishes, so an interrupted run resumes where it stopped (a run
folder with a checkpoint continues). At the end OUT/ablation.md holds the table (copy it and its stamp into
benchmarks/ablation/, replacing the files there). --data is under $LUNGNODULE_DATA, --out under $LUNGNODULE_RUNS.
--limit-patients keeps the first N patients (by id) of the table: a smoke run, not a result.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from LungNoduleExplainLib.bundle import load_bundle
from LungNoduleExplainLib.data.patches import PatchSet, build_patch_set
from LungNoduleExplainLib.data.voi_table import patient_folds, read_voi_table
from LungNoduleExplainLib.devices import resolve_device
from LungNoduleExplainLib.metrics import auc_with_ci
from LungNoduleExplainLib.network_config import DEFAULT_FEATURES, VARIANTS, NetworkConfig
from LungNoduleExplainLib.networks import predict
from LungNoduleExplainLib.patch import INPUT_CHANNELS
from LungNoduleExplainLib.runs import RunSpec, train_run
from LungNoduleExplainLib.tasks import TaskSet, load_task_set
from LungNoduleExplainLib.train_config import TrainConfig
from LungNoduleExplainLib.training import CHECKPOINT_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import BENCHMARKS, data_path, runs_path, write_stamp  # noqa: E402
sys.path.insert(0, str(BENCHMARKS / "descriptor_baseline"))
from descriptor_baseline import out_of_fold  # noqa: E402

MODELS = [*VARIANTS, "hesam-mt-aag+descriptors"]


def run_fold(args: argparse.Namespace, variant: str, fold: int, patches: PatchSet, folds: list[list[int]],
             table_patients: set[str], out: Path) -> Path:
    """Train (variant, fold) through train_run, every patient of the table but the other folds' excluded, unless
    its bundle exists; write the bundle's probabilities on the fold's nodules to OUT/<variant>/fold<k>.npz (kept:
    a finished fold is not redone)."""
    path = out / variant / f"fold{fold}.npz"
    if path.is_file():
        return path
    test_idx = folds[fold]
    train_patients = {patches.patient_ids[i] for f, idx in enumerate(folds) if f != fold for i in idx}
    name, _, option = variant.partition("+")
    spec = RunSpec(args.data, out / variant / f"run{fold}", args.tasks, val_fraction=args.val_fraction,
                   device=args.device, name=f"ablation {variant} fold {fold}",
                   exclude_patients=tuple(table_patients - train_patients))
    config = TrainConfig(network=NetworkConfig(name, args.features, stem_stride=args.stem_stride,
                                               inputs=tuple(args.inputs.split(",")),
                                               descriptors=option == "descriptors"),
                         max_epochs=args.epochs, phase1_epochs=min(args.phase1_epochs, args.epochs - 1),
                         seed=args.seed, threads=args.threads)
    t0 = time.time()
    bundle_dir = spec.run_dir / "bundle"
    if not bundle_dir.is_dir():  # a checkpoint: continue that run; else start it (replacing a run of ours cut short)
        resume = (spec.run_dir / CHECKPOINT_NAME).is_file()
        bundle_dir = train_run(spec, config, resume=resume, overwrite=not resume, show_progress_bar=False)
    bundle = load_bundle(bundle_dir, resolve_device(args.device))
    probs = predict(bundle.model, patches.subset(test_idx), bundle.device, bundle.network.inputs)
    training = bundle.manifest["training"]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, probs=probs, index=np.asarray(test_idx), seconds=training["seconds"],
             best_epoch=training["best_epoch"])
    print(f"{variant} fold {fold}: {time.time() - t0:.0f} s, best epoch {training['best_epoch']}", flush=True)
    return path


def collect(variant: str, out: Path, n: int, n_outputs: int, n_folds: int) -> np.ndarray | None:
    probs = np.full((n, n_outputs), np.nan)
    for fold in range(n_folds):
        path = out / variant / f"fold{fold}.npz"
        if not path.is_file():
            return None
        data = np.load(path)
        probs[data["index"], :data["probs"].shape[1]] = data["probs"]
    return probs


def table(rows: dict[str, dict[str, dict]], names: list[str]) -> str:
    header = "| model | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 1)]
    for model, per_output in rows.items():
        cells = []
        for name in names:
            m = per_output.get(name)
            cells.append("—" if m is None or math.isnan(m["auc"]) else
                         f"{m['auc']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cases(args: argparse.Namespace, task_set: TaskSet) -> tuple[PatchSet, list[list[int]], set[str]]:
    """The nodules cross-validated (patches with every variant's channels), their patient folds, and every patient
    of the table (the runs exclude all but their training patients)."""
    records = read_voi_table(args.data, task_set)
    table_patients = {r.patient_id for r in records}
    if args.limit_patients is not None:
        kept = set(sorted(table_patients)[:args.limit_patients])
        records = [r for r in records if r.patient_id in kept]
    patches = build_patch_set(records, task_set, channels=INPUT_CHANNELS)
    return patches, patient_folds(records, args.folds, args.seed), table_patients


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=data_path, default=data_path("lidc-voi"),
                        help="a lidc-voi folder, under $LUNGNODULE_DATA (default lidc-voi)")
    parser.add_argument("--out", type=runs_path, default=runs_path("ablation"),
                        help="the folds' runs and the tables, under $LUNGNODULE_RUNS (default ablation)")
    parser.add_argument("--tasks", default="lidc")
    parser.add_argument("--variants", nargs="*", default=MODELS, choices=MODELS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, nargs="*", default=None, help="train only these folds now")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--phase1-epochs", type=int, default=10)
    parser.add_argument("--features", type=lambda s: tuple(int(v) for v in s.split(",")), default=DEFAULT_FEATURES)
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--inputs", default="percentile")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="share of each fold's training patients that picks the epoch (default 0.15)")
    parser.add_argument("--limit-patients", type=int, default=None,
                        help="only the first N patients of the table, by id (a smoke run, not a result)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bootstrap", type=int, default=1000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task_set = load_task_set(args.tasks)
    patches, folds, table_patients = cases(args, task_set)
    for variant in args.variants:
        for fold in (args.only_folds if args.only_folds is not None else range(args.folds)):
            run_fold(args, variant, fold, patches, folds, table_patients, out)

    names = task_set.names
    rows: dict[str, dict[str, dict]] = {}
    for variant in args.variants:
        probs = collect(variant, out, len(patches), len(names), args.folds)
        if probs is None:
            continue
        rows[f"{variant}"] = {n: auc_with_ci(patches.labels[:, k], probs[:, k], patches.patient_ids,
                                             n_boot=args.bootstrap)
                              for k, n in enumerate(names) if not np.all(np.isnan(probs[:, k]))}
    descriptors, fold_arrays = patches.descriptors.astype(np.float64), [np.asarray(f) for f in folds]
    rows["descriptors + logistic regression"] = {
        n: auc_with_ci(patches.labels[:, k], out_of_fold(descriptors, patches.labels[:, k], fold_arrays),
                       patches.patient_ids, n_boot=args.bootstrap) for k, n in enumerate(names)}
    rows["size only (diameter_mm)"] = {n: auc_with_ci(patches.labels[:, k], patches.diameters_mm,
                                                      patches.patient_ids, n_boot=args.bootstrap)
                                       for k, n in enumerate(names)}
    text = (f"Patient-grouped {args.folds}-fold cross-validation on {len(patches)} nodules of "
            f"{len(set(patches.patient_ids))} patients; AUC (95% patient-bootstrap CI) of the pooled out-of-fold "
            f"predictions.\nCommand: python {' '.join(sys.argv)}\n\n" + table(rows, names) + "\n")
    (out / "ablation.md").write_text(text)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2, default=float))
    write_stamp(out / "ablation.md", [args.data])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
