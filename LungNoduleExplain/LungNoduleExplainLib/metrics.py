"""Metrics: AUC with a patient-clustered bootstrap CI, threshold metrics, Youden thresholds, Dice, calibration
(expected calibration error and Brier score).

Bootstrap by patient: resample patients with replacement and take all their nodules, because nodules of one
patient are not independent.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score, roc_curve


def safe_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC over the labelled entries (NaN labels dropped); NaN when only one class is present."""
    keep = ~np.isnan(y)
    y, score = y[keep], score[keep]
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, score))


def patient_resamples(groups: Sequence[str], n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """`n_boot` bootstrap resamples as index arrays: patients (`groups`) drawn with replacement, each bringing all
    its entries. Seeded, so two scores resampled with the same seed are judged on the same draws."""
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])


def auc_with_ci(y: np.ndarray, score: np.ndarray, groups: Sequence[str], n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> dict:
    """AUC and its (1 - alpha) percentile bootstrap CI, resampling `groups` (patients) with replacement."""
    y, score, groups = np.asarray(y, float), np.asarray(score, float), np.asarray(groups)
    keep = ~np.isnan(y)
    y, score, groups = y[keep], score[keep], groups[keep]
    auc = safe_auc(y, score)
    result = {"auc": auc, "ci_low": math.nan, "ci_high": math.nan, "n": int(len(y)),
              "n_positive": int((y == 1).sum()), "n_patients": int(len(np.unique(groups)))}
    if math.isnan(auc):
        return result
    boots = []
    for idx in patient_resamples(groups, n_boot, seed):
        if len(np.unique(y[idx])) == 2:
            boots.append(roc_auc_score(y[idx], score[idx]))
    if boots:
        result["ci_low"], result["ci_high"] = (float(v) for v in np.percentile(boots, [100 * alpha / 2,
                                                                                      100 * (1 - alpha / 2)]))
    return result


def threshold_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """Accuracy, sensitivity, precision, specificity and F1 of `prob >= threshold` over labelled entries."""
    keep = ~np.isnan(y)
    y, pred = y[keep].astype(int), (prob[keep] >= threshold).astype(int)
    tp, tn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    fp, fn = int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    sen, prec = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)  # 0 when positives exist and none is found (precision is then undefined)
    return {"threshold": float(threshold), "accuracy": ratio(tp + tn, len(y)), "sensitivity": sen,
            "specificity": ratio(tn, tn + fp), "precision": prec, "f1": f1, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def youden_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The probability threshold maximising sensitivity + specificity - 1 (0.5 when undefined)."""
    keep = ~np.isnan(y)
    if len(np.unique(y[keep])) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y[keep], prob[keep])
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def dice(prediction: np.ndarray | sitk.Image, reference: np.ndarray | sitk.Image) -> float:
    """Dice = 2|P & R| / (|P| + |R|) of two binary volumes of one shape (non-zero = foreground); 1.0 if both empty."""
    p = (sitk.GetArrayViewFromImage(prediction) if isinstance(prediction, sitk.Image) else np.asarray(prediction)) > 0
    r = (sitk.GetArrayViewFromImage(reference) if isinstance(reference, sitk.Image) else np.asarray(reference)) > 0
    if p.shape != r.shape:
        raise ValueError(f"Dice needs volumes of one shape; got {p.shape} and {r.shape}")
    total = int(p.sum()) + int(r.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total


def mean_with_ci(values: Sequence[float], groups: Sequence[str], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Mean of per-case values (e.g. Dice) with a patient-clustered percentile bootstrap CI (patient_resamples,
    the one resampling every CI here uses). Returns {"mean", "ci_low", "ci_high", "n"}.
    """
    values = np.asarray([float(v) for v in values])
    if not len(values):
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    means = [float(values[idx].mean()) for idx in patient_resamples(groups, n_boot, seed)]
    alpha = (1.0 - level) / 2.0
    return {"mean": float(np.mean(values)), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1.0 - alpha)), "n": len(values)}


ECE_BINS = 10


def reliability_bins(y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Equal-width probability bins over the labelled entries: per bin with entries, its range, count, mean
    probability and observed positive rate (the points of a reliability diagram). Bin b holds
    b/n_bins <= p < (b+1)/n_bins; p = 1 falls in the last bin."""
    y, prob = np.asarray(y, float), np.asarray(prob, float)
    keep = ~np.isnan(y)
    y, prob = y[keep], prob[keep]
    index = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = index == b
        if inside.any():
            bins.append({"low": b / n_bins, "high": (b + 1) / n_bins, "n": int(inside.sum()),
                         "mean_probability": float(prob[inside].mean()), "positive_rate": float(y[inside].mean())})
    return bins


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width bins of (bin count / N) * |positive rate - mean probability|, labelled entries
    only; NaN when none is labelled."""
    bins = reliability_bins(y, prob, n_bins)
    total = sum(b["n"] for b in bins)
    if not total:
        return math.nan
    return float(sum(b["n"] * abs(b["positive_rate"] - b["mean_probability"]) for b in bins) / total)


def brier_score(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between probability and label (0/1) over the labelled entries; NaN when none."""
    y, prob = np.asarray(y, float), np.asarray(prob, float)
    keep = ~np.isnan(y)
    return float(np.mean((prob[keep] - y[keep]) ** 2)) if keep.any() else math.nan


def calibration_with_ci(y: np.ndarray, prob: np.ndarray, groups: Sequence[str], n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> dict:
    """ECE and Brier score with (1 - alpha) percentile bootstrap CIs, resampling patients (`groups`)."""
    y, prob, groups = np.asarray(y, float), np.asarray(prob, float), np.asarray(groups)
    keep = ~np.isnan(y)
    y, prob, groups = y[keep], prob[keep], groups[keep]
    result = {"ece": expected_calibration_error(y, prob), "brier": brier_score(y, prob)}
    for key in ("ece", "brier"):
        result[f"{key}_ci_low"] = result[f"{key}_ci_high"] = math.nan
    if not len(y):
        return result
    scores = {"ece": expected_calibration_error, "brier": brier_score}
    boots = {key: [] for key in scores}
    for idx in patient_resamples(groups, n_boot, seed):
        for key, score in scores.items():
            boots[key].append(score(y[idx], prob[idx]))
    for key, values in boots.items():
        low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        result[f"{key}_ci_low"], result[f"{key}_ci_high"] = float(low), float(high)
    return result
