"""Metrics: AUC with a patient-clustered bootstrap CI, threshold metrics, Youden thresholds, Dice.

Bootstrap by patient: resample patients with replacement and take all their nodules, because nodules of one
patient are not independent.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def safe_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC over the labelled entries (NaN labels dropped); NaN when only one class is present."""
    keep = ~np.isnan(y)
    y, score = y[keep], score[keep]
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, score))


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
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
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
    f1 = 2 * sen * prec / (sen + prec) if sen + prec > 0 else math.nan
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


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice overlap of two binary arrays (1.0 when both are empty)."""
    p, r = prediction.astype(bool), reference.astype(bool)
    denominator = p.sum() + r.sum()
    return 1.0 if denominator == 0 else float(2 * np.logical_and(p, r).sum() / denominator)


def mean_with_ci(values: Sequence[float], groups: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of per-case values (e.g. Dice) with a patient-clustered percentile bootstrap 95% CI."""
    values, groups = np.asarray(values, float), np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    boots = [values[np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])].mean()
             for _ in range(n_boot)]
    low, high = np.percentile(boots, [2.5, 97.5]) if len(values) else (math.nan, math.nan)
    return {"mean": float(values.mean()) if len(values) else math.nan, "ci_low": float(low),
            "ci_high": float(high), "n": int(len(values))}
