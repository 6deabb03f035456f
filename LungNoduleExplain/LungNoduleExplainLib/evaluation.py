"""Judging a bundle on any folder in the `lidc-voi` format.

metrics.json (documented in README.md): per output, AUC with a patient-clustered 95% bootstrap CI, Acc/Sen/Spec/
Prec/F1 at the bundle's threshold, the size-only baseline (diameter_mm as the score) AUC with its CI, and the
calibration (ECE over 10 equal-width bins, Brier score, with CIs). Probabilities are calibrated through the bundle's
calibration.json when it has one (thresholds then on that scale too); the raw scores' ECE and Brier stand beside.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from .atomic import write_json_atomic, write_text_atomic
from .data.patches import PatchSet
from .data.voi_table import NoduleRecord
from .calibration import UNCALIBRATED_NOTICE
from .errors import DatasetError
from .vocabulary import Device, Prior
from .metrics import auc_with_ci, calibration_with_ci, reliability_bins, threshold_metrics, youden_threshold
from .output_folder import new_folder
from .progress import Progress, part

logger = logging.getLogger(__name__)


def output_metrics(names: list[str], probs: np.ndarray, patches: PatchSet,
                   thresholds: dict[str, float] | None, n_boot: int = 1000) -> dict:
    """Per output: AUC + CI, threshold metrics (at `thresholds`, or Youden's on these data when None), size AUC."""
    result = {}
    for k, name in enumerate(names):
        y, p = patches.labels[:, k], probs[:, k]
        threshold = youden_threshold(y, p) if thresholds is None else thresholds[name]
        entry = auc_with_ci(y, p, patches.patient_ids, n_boot=n_boot)
        entry.update(threshold_metrics(y, p, threshold))
        size = auc_with_ci(y, patches.diameters_mm, patches.patient_ids, n_boot=n_boot)
        entry["size_baseline"] = {"auc": size["auc"], "ci_low": size["ci_low"], "ci_high": size["ci_high"]}
        entry.update(calibration_with_ci(y, p, patches.patient_ids, n_boot=n_boot))
        result[name] = entry
    return result


def predictions_csv(names: list[str], probs: np.ndarray, patches: PatchSet, thresholds: dict[str, float],
                    raw: np.ndarray | None = None) -> str:
    """One row per nodule: per output the probability shown (calibrated when the bundle is), the call, the label
    and, with `raw`, the network's raw score."""
    raw = probs if raw is None else raw
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "patient_id", "diameter_mm"]
                    + [c for n in names for c in (f"{n}_probability", f"{n}_predicted", f"{n}_label",
                                                  f"{n}_raw_probability")])
    for i in range(len(patches)):
        row = [patches.case_ids[i], patches.patient_ids[i], f"{patches.diameters_mm[i]:.2f}"]
        for k, n in enumerate(names):
            y = patches.labels[i, k]
            row += [f"{probs[i, k]:.5f}", int(probs[i, k] >= thresholds[n]), "" if np.isnan(y) else int(y),
                    f"{raw[i, k]:.5f}"]
        writer.writerow(row)
    return buffer.getvalue()


def plot_roc(names: list[str], probs: np.ndarray, patches: PatchSet, metrics: dict, path: Path) -> None:
    """One panel per output: the model's ROC and the size-only baseline's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
    for ax, (k, name) in zip(axes.flat, enumerate(names)):
        y = patches.labels[:, k]
        keep = ~np.isnan(y)
        m = metrics[name]
        if len(np.unique(y[keep])) == 2:
            fpr, tpr, _ = roc_curve(y[keep], probs[keep, k])
            ax.plot(fpr, tpr, lw=1.8, label=f"model {m['auc']:.3f} [{m['ci_low']:.2f}-{m['ci_high']:.2f}]")
            fpr, tpr, _ = roc_curve(y[keep], patches.diameters_mm[keep])
            ax.plot(fpr, tpr, lw=1.0, ls="--", color="grey", label=f"diameter {m['size_baseline']['auc']:.3f}")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "one class only:\nno ROC", ha="center", va="center", fontsize=8)
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.6)
        ax.set(title=f"{name} (n={m['n']}, pos={m['n_positive']})", xlabel="1 - specificity", ylabel="sensitivity")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(names: list[str], probs: np.ndarray, patches: PatchSet, metrics: dict, path: Path,
                     raw: np.ndarray | None = None) -> None:
    """One reliability diagram per output: positive rate against mean probability in 10 equal-width bins (marker
    area ~ bin count), the diagonal of perfect calibration, and the raw scores' curve when `raw` differs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
    curves = [("shown", probs, "-", "C0")] + ([("raw", raw, "--", "grey")] if raw is not None else [])
    for ax, (k, name) in zip(axes.flat, enumerate(names)):
        m = metrics[name]
        for label, values, style, colour in curves:
            bins = reliability_bins(patches.labels[:, k], values[:, k])
            if not bins:
                continue
            x, y = [b["mean_probability"] for b in bins], [b["positive_rate"] for b in bins]
            ece = m["ece"] if label == "shown" else m.get("raw", {}).get("ece", float("nan"))
            ax.plot(x, y, style, color=colour, lw=1.4, label=f"{label} ECE {ece:.3f}")
            ax.scatter(x, y, s=[8 + 2 * b["n"] for b in bins], color=colour, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.6)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name} (n={m['n']}, pos={m['n_positive']})",
               xlabel="mean predicted probability", ylabel="observed positive rate")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_evaluation(out: Path, metrics: dict, predictions: str, plot: Callable[[Path], None],
                     plot_calibration: Callable[[Path], None] | None = None) -> None:
    """Write metrics.json, predictions.csv, roc_curves.png and reliability.png together: built in a folder beside
    `out` and renamed into place (output_folder's rule, checked by the caller), so a failure leaves `out` as it was."""
    with new_folder(out, verb="evaluate") as folder:
        # strict JSON: an undefined figure (e.g. the AUC of an output with one class only) is null, not NaN
        write_json_atomic(folder / "metrics.json", _nan_to_none(metrics), allow_nan=False)
        write_text_atomic(folder / "predictions.csv", predictions)
        plot(folder / "roc_curves.png")
        if plot_calibration is not None:
            plot_calibration(folder / "reliability.png")


def _nan_to_none(value):  # noqa: ANN001, ANN202 - any JSON-like value
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


PriorCallback = Callable[[NoduleRecord, sitk.Image], sitk.Image]


def _segmentation_prior(bundle, dice_by_case: dict[str, tuple[float, str]]) -> PriorCallback:  # noqa: ANN001
    """The bundle's nnU-Net model segments each nodule (as at analysis time); records Dice where a mask exists."""
    from .data.voi_table import read_image
    from .metrics import dice
    from .segmentation.metrics import seed_point
    from .segmentation.predict import NoduleSegmenter

    segmenter = NoduleSegmenter(bundle.segmentation_dir, device=str(bundle.device))

    def prior_maps(record: NoduleRecord, ct: sitk.Image) -> sitk.Image:
        has_mask = record.mask_path is not None and record.mask_path.is_file()
        reference = read_image(record.mask_path, f"mask of case {record.case_id}", on_grid_of=ct) if has_mask else None
        # seed_point: a few table centres lie outside their own VOI; segment from the mask centroid there
        result = segmenter.segment(ct, seed_point(record, ct, reference))
        if reference is not None:
            dice_by_case[record.case_id] = (dice(result.mask, reference), record.patient_id)
        return result.probability
    return prior_maps


def _saved_maps_prior(folder: Path, dice_by_case: dict[str, tuple[float, str]]) -> PriorCallback:
    """Probability maps `<folder>/<case_id>.nii.gz` (e.g. out-of-fold nnU-Net); records Dice where a mask exists."""
    from .data.patches import prior_path
    from .data.voi_table import read_image
    from .segmentation.metrics import dice_at_point, seed_point

    def prior_maps(record: NoduleRecord, ct: sitk.Image) -> sitk.Image:
        path = prior_path(record, str(folder))
        if not path.is_file():
            raise DatasetError(f"prior map for case {record.case_id} not found: {path}")
        probability = read_image(path, f"prior of case {record.case_id}", on_grid_of=ct)
        if record.mask_path is not None and record.mask_path.is_file():
            reference = read_image(record.mask_path, f"mask of case {record.case_id}", on_grid_of=ct)
            # the point the map was segmented from (as in _segmentation_prior and train-segmentation's OOF maps)
            point = seed_point(record, ct, reference)
            dice_by_case[record.case_id] = (dice_at_point(probability, reference, point), record.patient_id)
        return probability
    return prior_maps


def evaluate_folder(data: str | Path, bundle_path: str | Path | None, out: str | Path, *, prior: str = "auto",
                    device: str = Device.AUTO, n_boot: int = 1000, progress: Progress | None = None,
                    overwrite: bool = False) -> dict:
    """Evaluate a bundle on a dataset folder it has never seen; returns the metrics written to OUT/metrics.json.

    prior: "reference-mask" (the folder's masks feed the AAG), "segmentation" (the bundle's nnU-Net model segments
    each nodule, as at analysis time; Dice against the masks is reported too), a folder of probability maps
    `<case_id>.nii.gz` on each image's grid (e.g. out-of-fold nnU-Net maps of patients the segmentation model never
    saw; Dice of the component at the centre is reported too) or "auto": the prior the classifier was trained with
    (reference masks for a "reference-mask" bundle, nnU-Net for an "nnunet-oof" one). Nothing is written unless
    every nodule was read and scored. A non-empty `out` is refused unless `overwrite` and written by this program.
    """
    from .bundle import load_bundle
    from .output_folder import check_output_folder
    from .data.patches import build_patch_set
    from .data.voi_table import read_voi_table
    from .errors import ConfigError
    from .devices import resolve_device
    from .metrics import mean_with_ci
    from .networks import predict

    check_output_folder(Path(out), overwrite=overwrite)  # before the work, not after it
    bundle = load_bundle(bundle_path, device=resolve_device(device))
    if prior == "auto":
        prior = Prior.REFERENCE_MASK.value if bundle.prior == Prior.REFERENCE_MASK else "segmentation"
    map_folder = None
    if prior not in ("segmentation", Prior.REFERENCE_MASK):
        map_folder = Path(prior)
        if not map_folder.is_dir():
            raise ConfigError(f"prior must be auto, segmentation, reference-mask or a folder of probability maps "
                              f"<case_id>.nii.gz; {prior!r} is none of these")
    records = read_voi_table(data, bundle.task_set, require_masks=prior == Prior.REFERENCE_MASK)
    dice_by_case: dict[str, tuple[float, str]] = {}  # case -> (Dice, patient)
    prior_maps = None
    if map_folder is not None:
        prior_maps = _saved_maps_prior(map_folder, dice_by_case)
    elif prior == "segmentation":
        if bundle.segmentation_dir is None:
            raise ConfigError(f"bundle {bundle.path} has no segmentation model; use --prior reference-mask")
        prior_maps = _segmentation_prior(bundle, dice_by_case)

    patches = build_patch_set(records, bundle.task_set, Prior.REFERENCE_MASK, channels=bundle.network.inputs,
                              prior_maps=prior_maps,
                              spacing=bundle.spacing, size=bundle.patch_size,
                              progress=part(progress, 0.0, 0.8))
    raw = predict(bundle.model, patches, bundle.device, bundle.network.inputs)
    probs, thresholds = bundle.calibrate(raw), bundle.call_thresholds
    names = bundle.output_names
    metrics = {"bundle": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path),
                          "trained_prior": bundle.prior},
               "data": str(data), "prior": prior, "n_nodules": len(patches),
               "n_patients": len(set(patches.patient_ids)), "calibrated": bundle.calibrated,
               "warnings": [] if bundle.calibrated else [UNCALIBRATED_NOTICE],
               "outputs": output_metrics(names, probs, patches, thresholds, n_boot=n_boot)}
    if bundle.calibrated:  # the raw scores' calibration, on the same nodules and bootstrap draws
        for k, name in enumerate(names):
            metrics["outputs"][name]["raw"] = calibration_with_ci(patches.labels[:, k], raw[:, k],
                                                                  patches.patient_ids, n_boot=n_boot)
    if dice_by_case:
        values, groups = zip(*dice_by_case.values())
        metrics["segmentation_dice"] = mean_with_ci(values, groups, n_boot=n_boot)
    out = Path(out)
    write_evaluation(out, metrics, predictions_csv(names, probs, patches, thresholds, raw),
                     lambda path: plot_roc(names, probs, patches, metrics["outputs"], path),
                     lambda path: plot_reliability(names, probs, patches, metrics["outputs"], path,
                                                   raw if bundle.calibrated else None))
    if progress:
        progress(1.0, f"metrics written to {out / 'metrics.json'}")
    return metrics
