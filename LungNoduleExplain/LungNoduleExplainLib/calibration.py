"""Calibrated probabilities: one monotone map per output, fitted on out-of-fold predictions, kept in the bundle.

Fitting (`fit_calibration`): per output, isotonic regression and a logistic regression on the logit
(Platt scaling on logit(p)) are both scored by log-loss on patients left out of their fit (GroupKFold by patient
inside the fit data); the lower log-loss is kept. Nothing is pickled: the bundle's `calibration.json` holds plain
numbers (isotonic: the knots x, y of its piecewise-linear map; logistic: slope and intercept), and the manifest
lists it with its SHA-256 like every other file, so a modified one is refused on load.

Applying (`Calibration.apply`): isotonic -> np.interp on the knots, blended with TIE_SLOPE * p so that the map is
strictly increasing (an isotonic flat would otherwise give two raw probabilities on either side of the threshold
one calibrated value, and change calls); logistic -> sigmoid(slope * logit(p) + intercept) with slope > 0. Both
are strictly increasing, so `calibrated(p) >= calibrated(t)` exactly when `p >= t`: mapping each manifest
threshold through its output's map keeps every call as it was.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BundleError, ConfigError

CALIBRATION_NAME = "calibration.json"
FORMAT_VERSION = 1
METHODS = ("isotonic", "logistic")
TIE_SLOPE = 1e-4  # weight of the identity in the isotonic map: strictly increasing, values moved by <= 1e-4
PROB_FLOOR = 1e-3  # isotonic values kept in [1e-3, 1 - 1e-3]: a finite log-loss, no "0.00" certainty
LOGIT_CLIP = 1e-6
INNER_FOLDS = 5


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p / (1.0 - p))


def apply_output(params: dict, p: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of raw probabilities `p` (any shape) under one output's parameters."""
    p = np.asarray(p, dtype=float)
    if params["method"] == "isotonic":
        curve = np.interp(p, np.asarray(params["x"], float), np.asarray(params["y"], float))
        return (1.0 - TIE_SLOPE) * curve + TIE_SLOPE * p
    z = params["slope"] * _logit(p) + params["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=PROB_FLOOR, y_max=1.0 - PROB_FLOOR, out_of_bounds="clip").fit(p, y)
    return {"method": "isotonic", "x": [float(v) for v in model.X_thresholds_],
            "y": [float(v) for v in model.y_thresholds_]}


def _fit_logistic(p: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p)[:, None], y)  # C large: no shrinkage
    return {"method": "logistic", "slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}


FITTERS = {"isotonic": _fit_isotonic, "logistic": _fit_logistic}


def log_loss(y: np.ndarray, q: np.ndarray) -> float:
    """Mean binary log-loss (nats) of probabilities q for labels y."""
    q = np.clip(np.asarray(q, float), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    y = np.asarray(y, float)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log(1.0 - q)))


def held_out_log_loss(p: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str) -> float:
    """Log-loss of `method` on patients left out of its fit: GroupKFold by patient (up to 5 folds), pooled."""
    from sklearn.model_selection import GroupKFold

    n_splits = min(INNER_FOLDS, len(np.unique(groups)))
    q = np.full(len(p), np.nan)
    for fit, held in GroupKFold(n_splits=n_splits).split(p, y, groups):
        if len(np.unique(y[fit])) < 2:  # a fold with one class cannot fit: predict its prevalence
            q[held] = float(np.mean(y[fit]))
            continue
        q[held] = apply_output(FITTERS[method](p[fit], y[fit]), p[held])
    return log_loss(y, q)


def fit_output(p: Sequence[float], y: Sequence[float], groups: Sequence[str]) -> dict:
    """Fit one output's calibrator on labelled raw probabilities (NaN labels dropped); the method with the lower
    held-out log-loss wins. A logistic fit with slope <= 0 (no ranking left) is never chosen."""
    p, y, groups = np.asarray(p, float), np.asarray(y, float), np.asarray(groups)
    keep = ~np.isnan(y) & ~np.isnan(p)
    p, y, groups = p[keep], y[keep], groups[keep]
    if len(np.unique(y)) < 2 or len(np.unique(groups)) < 2:
        raise ConfigError(f"calibration needs both classes and at least 2 patients; got {len(y)} labelled "
                          f"nodules, {int(y.sum())} positive, {len(np.unique(groups))} patients")
    losses = {m: held_out_log_loss(p, y, groups, m) for m in METHODS}
    fitted = {m: FITTERS[m](p, y) for m in METHODS}
    if fitted["logistic"]["slope"] <= 0:
        losses["logistic"] = math.inf
    method = min(METHODS, key=lambda m: losses[m])
    return {**fitted[method], "held_out_log_loss": {m: (None if math.isinf(v) else round(v, 5))
                                                    for m, v in losses.items()},
            "raw_log_loss": round(log_loss(y, p), 5), "n": int(len(y)), "n_positive": int(y.sum()),
            "n_patients": int(len(np.unique(groups)))}


def fit_calibration(probs: np.ndarray, labels: np.ndarray, groups: Sequence[str], names: Sequence[str],
                    thresholds: dict[str, float], source: str) -> dict:
    """The calibration.json document: one fitted map per output, each manifest threshold mapped through it.

    probs, labels: [N, n_outputs] out-of-fold raw probabilities and labels (NaN: unlabelled); groups: patient id of
    each row; thresholds: the manifest's raw thresholds; source: where the predictions came from (recorded).
    """
    outputs = {}
    for k, name in enumerate(names):
        params = fit_output(probs[:, k], labels[:, k], groups)
        raw = float(thresholds[name])
        outputs[name] = {**params, "raw_threshold": raw, "threshold": float(apply_output(params, raw))}
    return {"format_version": FORMAT_VERSION, "fitted_on": source,
            "how": "per output: isotonic or logistic-on-logit, the lower log-loss on patients left out of the fit "
                   f"(GroupKFold by patient, {INNER_FOLDS} folds); isotonic blended with {TIE_SLOPE:g} x p so no "
                   "call changes; thresholds = the manifest's mapped through the same map",
            "outputs": outputs}


@dataclass
class Calibration:
    """A bundle's validated calibration: per output name, its map and calibrated threshold."""

    outputs: dict[str, dict]

    @property
    def thresholds(self) -> dict[str, float]:
        return {name: float(p["threshold"]) for name, p in self.outputs.items()}

    def method(self, name: str) -> str:
        return self.outputs[name]["method"]

    def apply(self, name: str, p: np.ndarray | float) -> np.ndarray:
        return apply_output(self.outputs[name], p)

    def apply_all(self, probs: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """[N, len(names)] raw probabilities -> calibrated, column k through output names[k]'s map."""
        return np.stack([self.apply(n, probs[:, k]) for k, n in enumerate(names)], axis=1)

    @classmethod
    def from_dict(cls, doc: object, output_names: Sequence[str], where: str) -> "Calibration":
        """Validate a calibration.json document against the bundle's outputs; BundleError naming what is wrong."""
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), dict):
            raise BundleError(f"{where}: expected a JSON object with 'outputs': {{output name: parameters}}")
        outputs = doc["outputs"]
        unknown = sorted(set(outputs) - set(output_names))
        if unknown:
            raise BundleError(f"{where}: calibrator for unknown output(s) {unknown}; the bundle's outputs are "
                              f"{list(output_names)}")
        missing = [n for n in output_names if n not in outputs]
        if missing:
            raise BundleError(f"{where}: no calibrator for output(s) {missing}; expected one for each of "
                              f"{list(output_names)}")
        for name in output_names:
            _check_params(outputs[name], f"{where} output {name!r}")
        return cls({n: outputs[n] for n in output_names})


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_params(params: object, where: str) -> None:
    if not isinstance(params, dict) or params.get("method") not in METHODS:
        raise BundleError(f"{where}: expected an object with 'method' one of {list(METHODS)}")
    if not _finite(params.get("threshold")) or not 0.0 <= params["threshold"] <= 1.0:
        raise BundleError(f"{where}: expected 'threshold', the calibrated threshold, a number in [0, 1]")
    if params["method"] == "logistic":
        if not (_finite(params.get("slope")) and params["slope"] > 0 and _finite(params.get("intercept"))):
            raise BundleError(f"{where}: logistic expects 'slope' > 0 and 'intercept', finite numbers")
        return
    x, y = params.get("x"), params.get("y")
    if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 1
            and all(_finite(v) for v in x + y)):
        raise BundleError(f"{where}: isotonic expects 'x' and 'y', lists of numbers of one length (>= 1)")
    if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or min(y) < 0 or max(y) > 1:
        raise BundleError(f"{where}: isotonic expects 'x' strictly increasing and 'y' non-decreasing in [0, 1]")


def read_calibration(bundle_path: Path, manifest: dict, output_names: Sequence[str]) -> Calibration | None:
    """The bundle's calibration, or None when its manifest lists no calibration.json (an uncalibrated bundle).
    The checksum was verified by read_manifest; here the content is checked."""
    if CALIBRATION_NAME not in manifest.get("files", {}):
        return None
    path = Path(bundle_path) / CALIBRATION_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return Calibration.from_dict(doc, output_names, str(path))


def read_oof_predictions(path: str | Path, names: Sequence[str], suffix: str = "_oof"
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, labels, patient ids) from an out-of-fold predictions CSV: columns patient_id and, per
    output name, `<name><suffix>` (raw probability) and `<name>_label` (0, 1 or empty); as written by
    benchmarks/out_of_fold/make_oof.py. DatasetError naming the file and the missing column or bad cell."""
    import csv

    from .errors import DatasetError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"predictions file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    needed = ["patient_id"] + [c for n in names for c in (f"{n}{suffix}", f"{n}_label")]
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise DatasetError(f"{path}: expected columns {missing} (patient_id, and per output <name>{suffix} "
                           "with <name>_label)")
    probs = np.full((len(rows), len(names)), np.nan)
    labels = np.full((len(rows), len(names)), np.nan)
    for i, row in enumerate(rows):
        for k, n in enumerate(names):
            try:
                probs[i, k] = float(row[f"{n}{suffix}"])
                labels[i, k] = float(row[f"{n}_label"]) if row[f"{n}_label"].strip() else np.nan
            except ValueError:
                raise DatasetError(f"{path} line {i + 2}: {n}{suffix} must be a probability and {n}_label 0, 1 "
                                   f"or empty; got {row[f'{n}{suffix}']!r}, {row[f'{n}_label']!r}") from None
            if not 0.0 <= probs[i, k] <= 1.0 or labels[i, k] not in (0.0, 1.0) and not np.isnan(labels[i, k]):
                raise DatasetError(f"{path} line {i + 2}: {n}{suffix} must lie in [0, 1] and {n}_label be 0, 1 "
                                   f"or empty; got {probs[i, k]}, {row[f'{n}_label']!r}")
    return probs, labels, np.asarray([r["patient_id"] for r in rows])


UNCALIBRATED_NOTICE = ("the model bundle has no calibration.json: probabilities are the network's raw scores, "
                       "not calibrated probabilities")
