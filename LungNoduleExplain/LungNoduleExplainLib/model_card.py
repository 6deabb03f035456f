"""The model card of a packaged bundle (MODEL_CARD.md), written from the source run's manifest, and the packaging
itself: `lungnodule-explain package-bundle` copies a finished run's classifier into a new bundle with an nnU-Net
model folder, carries its calibration.json and map_scale.json (the weights are the same), re-computes every
checksum and writes the card from the run's metrics (validation, or out of fold for a run without validation
patients, beside a held-out run of the same recipe)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .bundle import ModelBundle, add_map_scale, load_bundle, save_bundle
from .output_folder import check_output_folder, new_folder
from .patch import CHANNEL_DESCRIPTIONS
from .vocabulary import Prior

CARD_NAME = "MODEL_CARD.md"


@dataclass(frozen=True)
class PackageRequest:
    """What to package. `run`: a training run folder (its bundle/ is used) or a bundle folder; `segmentation`: an
    nnU-Net model folder (plans.json, dataset.json, fold_k/checkpoint_final.pth) or None; `evaluation`: an
    `evaluate` output folder whose metrics the card quotes; `recipe`: a held-out run of the same recipe (for a run
    trained with --val-fraction 0), `recipe_differs` how it differs where it is only the nearest; `command`: the
    line that made it, for the card."""

    run: Path
    out: Path
    segmentation: Path | None = None
    evaluation: Path | None = None
    recipe: Path | None = None
    recipe_differs: str = ""
    version: str = "1"
    note: str = ""
    command: str = ""


def _bundle_folder(run: Path) -> Path:
    return run / "bundle" if (run / "bundle").is_dir() else run


def package_bundle(request: PackageRequest, *, overwrite: bool = False) -> Path:
    """Write the bundle and its card to request.out (the output-folder rule: a non-empty folder is refused unless
    `overwrite` and written by lungnodule-explain; replaced by renames). Returns the folder."""
    check_output_folder(request.out, overwrite=overwrite)
    source = load_bundle(_bundle_folder(request.run))
    metrics = dict(source.manifest["metrics"])
    if request.evaluation is not None:
        metrics["validation_with_segmentation_prior"] = json.loads((request.evaluation / "metrics.json").read_text())
    calibration = source.path / "calibration.json"
    with new_folder(request.out, verb="package-bundle") as staging:
        bundle = save_bundle(staging / "bundle", source.model, source.task_set, source.network, source.thresholds,
                             name=source.manifest["name"], prior=source.prior, training=source.manifest["training"],
                             metrics=metrics, segmentation_dir=request.segmentation, version=request.version,
                             calibration=json.loads(calibration.read_text()) if calibration.is_file() else None)
        map_scale = source.path / "map_scale.json"
        if map_scale.is_file():
            add_map_scale(bundle, json.loads(map_scale.read_text()))
        recipe = load_bundle(_bundle_folder(request.recipe)).manifest if request.recipe is not None else None
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2 ** 20
        (bundle / CARD_NAME).write_text(model_card(source, metrics, request, recipe, size))
        for item in bundle.iterdir():
            item.rename(staging / item.name)
        bundle.rmdir()
    return Path(request.out)


def fmt(m: dict) -> str:
    if m is None or math.isnan(m.get("auc", math.nan)):
        return "n/a"
    return f"{m['auc']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})"


def metrics_table(outputs: dict) -> str:
    lines = ["| output | AUC (95% CI) | size-only AUC | n (pos) | threshold | Acc | Sen | Spec | Prec | F1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in outputs.items():
        lines.append(f"| {name} | {fmt(m)} | {fmt(m['size_baseline'])} | {m['n']} ({m['n_positive']}) | "
                     f"{m['threshold']:.3f} | {m['accuracy']:.3f} | {m['sensitivity']:.3f} | {m['specificity']:.3f} | "
                     f"{m['precision']:.3f} | {m['f1']:.3f} |")
    return "\n".join(lines)


def _segmentation_schedule(model_dir: Path, config: dict) -> str:
    """How much each fold was trained, batches counted across continued runs (recorded in each fold's checkpoint)."""
    from LungNoduleExplainLib.segmentation.predict import CHECKPOINT_NAME, load_weights_checkpoint
    from LungNoduleExplainLib.segmentation.training import trained_batches

    batches = {trained_batches(load_weights_checkpoint(f / CHECKPOINT_NAME)) for f in sorted(model_dir.glob("fold_*"))}
    batch_size = config.get("plans", {}).get("batch_size", 2)
    text = f"{' / '.join(f'{b:,}' for b in sorted(batches))} batches of {batch_size} per fold"
    if config.get("init_from"):
        text += (f" (the last {config['epochs']} x {config['iterations_per_epoch']} of them continuing the previous "
                 f"model's folds at initial learning rate {config['initial_lr']})")
    return text


def model_card(source: ModelBundle, metrics: dict, request: PackageRequest, recipe: dict | None,
               size_mib: float) -> str:
    """MODEL_CARD.md of the packaged bundle: what it is, data and split, the metrics, limitations, provenance."""
    m, t, size = source.manifest, source.manifest["training"], size_mib
    reference = m["prior"] == Prior.REFERENCE_MASK
    ensemble = source.members > 1
    if ensemble:
        weights = {k: round(sum(w[k] for w in t["task_weights"]) / len(t["task_weights"]), 3)
                   for k in t["task_weights"][0]}
        schedule = (f"{source.members} members, {', '.join(map(str, t['epochs_run']))} epochs (best "
                    f"{', '.join(map(str, t['best_epoch']))}), {t['seconds'] / 60:.0f} min in all on a 2-core CPU; "
                    f"task weights (mean over members) {json.dumps(weights)}.")
    else:
        schedule = (f"{t['epochs_run']} epochs (best {t['best_epoch']}), {t['seconds'] / 60:.0f} min on a 2-core "
                    f"CPU; task weights {json.dumps({k: round(v, 3) for k, v in t['task_weights'].items()})}.")
    readers = [task.name for task in source.task_set.all_tasks if task.readers_column]
    held_out = "validation" in metrics  # else `train --val-fraction 0`: every patient trained members
    figures = metrics["validation" if held_out else "out_of_fold"]
    card = [f"# Model card: {m['name']} v{request.version}", "",
            "**Intended use: research only. Not a medical device; not for clinical decisions.** It predicts "
            "radiologists' suspicion ratings from LIDC-IDRI, not pathology.", "",
            "## What it is",
            f"- Classifier: 3D HESAM variant `{source.network.variant}`, widths {list(source.network.features)}, "
            f"stem stride {source.network.stem_stride} (the authors: widths 64-512, stride 1), anatomical attention "
            f"gates fed by the prior. Outputs: {', '.join(source.output_names)}.",
            *([f"- An ensemble of {source.members} such networks: the {'training ' if held_out else ''}patients "
               "were split into "
               f"{source.members} patient folds, member k trained on all but fold k and picked its epoch on fold k. "
               "Its probability is the mean of the members' probabilities, its activation map the mean of their "
               "maps."] if ensemble else []),
            *([f"- Nodule descriptors: on. Each head adds a linear term of {source.network.n_descriptors} "
               f"standardised shape and HU statistics of the prior region (descriptors.py, set "
               f"`{source.network.descriptor_set}`) to its SAM logits; this "
               "is our addition to the paper's network, because its per-patch min-max input hides absolute density. "
               "The activation maps show the image term only."] if source.network.descriptors else []),
            *[f"- Image input `{c}`: {CHANNEL_DESCRIPTIONS[c]}." for c in source.network.inputs],
            f"- Prior at training time: `{m['prior']}` ("
            + ("reference masks of lidc-voi" if reference else "out-of-fold nnU-Net probability maps of lidc-voi: each "
               "nodule segmented by the fold model that never saw its patient, as the paper does; the descriptors "
               "come from the same maps")
            + "). At analysis time the prior is the bundled nnU-Net model's probability map.",
            f"- Segmentation: {'nnU-Net v2 model in segmentation/ (see docs/SEGMENTATION.md)' if request.segmentation else 'none'}.",
            f"- Bundle size: {size:.1f} MiB; every file SHA-256-checked at load; weights in safetensors.", "",
            "## Data and split",
            f"- Trained on `{Path(t['data']).name}` (LIDC-IDRI VOIs, CC BY 3.0): {t['n_train']} nodules of "
            f"{t['n_train_patients']} patients; "
            + ((("validation (only to measure the finished ensemble: no epoch, threshold or weight was chosen on it) "
                 if ensemble else "validation (model selection, thresholds) ")
                + f"{t['n_val']} nodules of {t['n_val_patients']} patients. Split **by patient**, seed {t['seed']}.")
               if held_out else
               "**every patient of the set**, no validation hold-out: "
               + ("the nearest recipe was measured on held-out patients (below) and this model's difference from it "
                  "shipped under a criterion written before the run (docs/RESULTS.md)." if request.recipe_differs else
                  "the recipe was fixed beforehand on held-out patients (docs/RESULTS.md), so this model only adds "
                  "their data.")
               + f" Folds **by patient**, seed {t['seed']}."),
            "- Labels: per-nodule mode ratings; malignancy 4-5 vs 1-2 (3 left out); manifestation rules in "
            "`configs/tasks-lidc.json`.",
            *([f"- Training targets: the readers' share (each output's `readers_column`: of the readers whose rating "
               "the rule counts, the fraction that rated the finding present; docs/DATA.md) for "
               f"{', '.join(readers)}, where the table has each reader's rating "
               "(`benchmarks/lidc_reader_ratings/`); else the label. Metrics, epochs and thresholds: the labels."]
              if readers else []),
            f"- Training: {schedule}", "",
            (f"## Metrics on the validation patients ({'reference-mask' if reference else 'out-of-fold nnU-Net'} "
             "prior)" if held_out else "## Metrics out of fold on every patient (out-of-fold nnU-Net prior)"),
            "AUC with a 95% bootstrap CI resampled by patient, beside the size-only baseline (diameter_mm as the "
            "score). "
            + ("Each nodule is scored by the member that never trained on its patient, but that member picked its "
               "epoch on it, and the thresholds are Youden's on these same predictions: the AUCs are slightly "
               "optimistic, the threshold metrics more so. Each member alone is also not the ensemble; "
               "docs/RESULTS.md gives the recipe's figures on patients it never chose anything on."
               if not held_out else
               "Thresholds are Youden's on the members' pooled out-of-fold predictions on the training patients, "
               "so nothing here was tuned on these patients." if ensemble else
               "Thresholds were chosen on these same patients (Youden), so the threshold metrics are optimistic; "
               "the AUCs are not tuned."), "", metrics_table(figures)]
    if recipe is not None:
        rt = recipe["training"]
        card += ["", f"## The {'nearest' if request.recipe_differs else 'same'} recipe on patients it never chose "
                 f"anything on (`{recipe['name']}` trained on {rt['n_train_patients']} patients, measured on its "
                 f"{rt['n_val_patients']} validation patients)",
                 "", "The recipe's estimate: its members held those patients out entirely (no epoch, threshold or "
                 "weight chosen on them). This model adds their data to the training."
                 + (f" It differs from this model's recipe: {request.recipe_differs}." if request.recipe_differs else ""), "",
                 metrics_table(recipe["metrics"]["validation"])]
    if ensemble and held_out:
        card += ["", "What the averaging adds, on the same patients: each member alone, and the members' pooled "
                 "out-of-fold AUC on the training patients (each nodule scored by the member that never trained on "
                 "its patient).", "",
                 "| output | ensemble | members alone (min–max) | members out of fold, training patients |",
                 "|---|---|---|---|"]
        for name, entry in metrics["validation"].items():
            alone = t["members_validation_auc"][name]
            card.append(f"| {name} | {entry['auc']:.3f} | {min(alone):.3f}–{max(alone):.3f} | "
                        f"{t['members_out_of_fold_auc'][name]:.3f} |")
    if "validation_with_segmentation_prior" in metrics:
        ev = metrics["validation_with_segmentation_prior"]
        how = (f"prior `{ev['prior']}`" if ev["prior"] in ("segmentation", Prior.REFERENCE_MASK) else
               "out-of-fold nnU-Net maps: each nodule segmented by the fold model that never saw its patient, with "
               "the default crop; descriptors from those maps too")
        card += ["", f"## The same patients with the nnU-Net prior (as at analysis time; {how})", "",
                 f"Thresholds are the bundle's, chosen with the {'reference-mask' if reference else 'same'} prior.",
                 "",
                 metrics_table(ev["outputs"])]
        if "segmentation_dice" in ev:
            d = ev["segmentation_dice"]
            card += ["", f"Segmentation Dice {d['mean']:.3f} ({d['ci_low']:.3f}–{d['ci_high']:.3f}), n={d['n']}."]
    seg_cv = (request.segmentation / "cross_validation.json") if request.segmentation else None
    if seg_cv is not None and seg_cv.is_file():
        import numpy as np
        cv = json.loads(seg_cv.read_text())
        folds = sorted(p.name for p in request.segmentation.glob("fold_*"))
        mean_dice = float(np.mean(list(cv["dice"].values())))
        card += ["", "## Segmentation model",
                 f"nnU-Net v2, small plans, folds present: {', '.join(folds)} (ensembled at analysis time); trained "
                 f"{_segmentation_schedule(request.segmentation, cv.get('config', {}))}. Out-of-fold Dice "
                 "(connected component at the centre vs the reference mask; "
                 + cv.get("dice_note", "as recorded during training, with the crop of the code of that time")
                 + f") mean {mean_dice:.4f} over {len(cv['dice'])} nodules; by fold and size with its CI in "
                 "benchmarks/segmentation/results.md; "
                 + ("at or above the 0.82 target." if mean_dice >= 0.82 else
                    "**below the 0.82 target** (paper 0.818): a CPU budget is a small share of nnU-Net's default "
                    "schedule. Maps, volumes and click-time descriptors in `analyze` inherit this.")]
    card += ["", "## Limitations",
             "- Small CPU-trained network: far fewer epochs and channels than the paper; see docs/RESULTS.md.",
             "- Trained on tight VOIs padded with air; `analyze` recreates a VOI-like box around the segmented nodule.",
             *(["- The descriptors, like the prior, come from the reference mask in training and evaluation but from "
                "the bundled nnU-Net map in `analyze`, so the click-time descriptors are rougher than the ones the "
                "figures above were measured with (see the nnU-Net-prior figures)."]
               if source.network.descriptors and reference else []),
             "- Against a radiomics-style bar (logistic regression on the same descriptors, same patients and "
             "folds): benchmarks/descriptor_baseline/, benchmarks/network_vs_descriptors/ (results per bundle "
             "version, the newest current).",
             "- LIDC readers' ratings are subjective; 'malignant' means 'rated suspicious' (4-5).", "",
             f"Made with: `{request.command}`"
             + (f" ({request.note})" if request.note else "")]
    return "\n".join(card) + "\n"
