"""The paper's ablation on our data: patient-grouped k-fold cross-validation of the HESAM variants, the 3D
baselines and the size-only baseline; AUC with a patient-bootstrap 95% CI for every output.

    python benchmarks/ablation/ablation.py [--data lidc-voi] [--out ablation] \
        [--variants hesam hesam-mt hesam-mt-cbam hesam-mt-aag hesam-mt-aag+descriptors vgg resnet densenet] \
        [--folds 5] [--epochs 60]

`+descriptors` adds the nodule descriptors beside each head (the shipped model's configuration). Beside the size-only
baseline the table has "descriptors + logistic regression" (benchmarks/descriptor_baseline/) on the same folds.

Each (variant, fold) writes its out-of-fold predictions to OUT/<variant>/fold<k>.npz as soon as it finishes, so an
interrupted run resumes where it stopped. At the end OUT/ablation.md holds the table (copy it and its stamp into
benchmarks/ablation/, replacing the files there). --data is under $LUNGNODULE_DATA, --out under $LUNGNODULE_RUNS.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.patch import INPUT_CHANNELS
from LungNoduleExplainLib.data.voi_table import patient_folds, read_voi_table
from LungNoduleExplainLib.metrics import auc_with_ci
from LungNoduleExplainLib.networks import DEFAULT_FEATURES, VARIANTS, NetworkConfig
from LungNoduleExplainLib.runs import split_patch_set
from LungNoduleExplainLib.tasks import load_task_set
from LungNoduleExplainLib.networks import predict
from LungNoduleExplainLib.training import Trainer, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import BENCHMARKS, data_path, runs_path, write_stamp  # noqa: E402
sys.path.insert(0, str(BENCHMARKS / "descriptor_baseline"))
from descriptor_baseline import out_of_fold  # noqa: E402

MODELS = [*VARIANTS, "hesam-mt-aag+descriptors"]


def run_fold(args: argparse.Namespace, variant: str, fold: int, patches, folds, task_set, out: Path) -> None:
    path = out / variant / f"fold{fold}.npz"
    if path.is_file():
        return
    test_idx = folds[fold]
    train_val = patches.subset([i for f, idx in enumerate(folds) if f != fold for i in idx])
    patients = sorted(set(train_val.patient_ids))
    rng = np.random.default_rng([args.seed, fold])
    val_patients = set(rng.choice(patients, size=max(1, int(0.15 * len(patients))), replace=False))
    train_set, val_set = split_patch_set(train_val, val_patients)
    name, _, option = variant.partition("+")
    config = TrainConfig(network=NetworkConfig(name, args.features, stem_stride=args.stem_stride,
                                               inputs=tuple(args.inputs.split(",")),
                                               descriptors=option == "descriptors"),
                         max_epochs=args.epochs, phase1_epochs=min(args.phase1_epochs, args.epochs - 1),
                         seed=args.seed, threads=args.threads)
    t0 = time.time()
    trainer = Trainer(config, train_set, val_set, out / variant / f"run{fold}", len(task_set.manifestations),
                      task_set.names, device=args.device, show_progress_bar=False)
    result = trainer.run(resume=(out / variant / f"run{fold}" / "checkpoint.pt").is_file())
    test = patches.subset(test_idx)
    probs = predict(result.model, test, trainer.device, config.network.inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, probs=probs, index=np.asarray(test_idx), seconds=time.time() - t0, best_epoch=result.best_epoch)
    print(f"{variant} fold {fold}: {time.time() - t0:.0f} s, best epoch {result.best_epoch}", flush=True)


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


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task_set = load_task_set(args.tasks)
    records = read_voi_table(args.data, task_set)
    patches = build_patch_set(records, task_set, channels=INPUT_CHANNELS, training_targets=True)  # every variant's
    folds = patient_folds(records, args.folds, args.seed)
    for variant in args.variants:
        for fold in (args.only_folds if args.only_folds is not None else range(args.folds)):
            run_fold(args, variant, fold, patches, folds, task_set, out)

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
