"""Tables of map_quality.py's per-nodule lines: results.md and results.json beside them (criterion in README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from LungNoduleExplainLib.atomic import write_text_atomic

SHARE_METHODS = ("sam", "sam_visible", "sam_near", "contribution", "contribution_visible", "contribution_near",
                 "gradcam", "gradcam_visible", "occlusion", "occlusion_visible")
TARGET_NODULE, TARGET_EDGE, TARGET_RHO = 0.8, 0.1, 0.2


def _median(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _ci_by_patient(diff: np.ndarray, patients: list[str], seed: int = 0, n_boot: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the mean of `diff`, resampling patients."""
    ids = sorted(set(patients))
    groups = [np.flatnonzero(np.asarray(patients) == p) for p in ids]
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        pick = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
        means.append(diff[pick].mean())
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(folder: Path, names: list[str]) -> dict:
    rows = [json.loads(line) for f in sorted(folder.glob("per_nodule.*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]
    patients = [r["patient_id"] for r in rows]
    out: dict = {"n_nodules": len(rows), "n_patients": len(set(patients)), "outputs": names, "shares": {},
                 "uniform": {}, "manifestation_place": {}, "deletion": {}, "randomisation": {}, "logit_terms": {}}
    for m in SHARE_METHODS:
        out["shares"][m] = {}
        have = [r for r in rows if m in r["shares"]]  # occlusion only on the nodules scored in full
        out["shares"][m]["n_nodules"] = len(have)
        for j, name in enumerate(names):
            s = [r["shares"][m][j] for r in have]
            out["shares"][m][name] = {
                "nodule_median": _median([x["nodule"] for x in s]), "edge_median": _median([x["edge"] for x in s]),
                "padding_median": _median([x["padding"] for x in s]),
                "empty_maps": sum(x["nodule"] is None for x in s)}
    out["uniform"] = {z: _median([r["uniform"][z] for r in rows]) for z in ("nodule", "edge", "shell", "calcium")}
    place = {"spiculated": "shell", "lobulated": "shell", "calcified": "calcium"}
    for name, zone in place.items():
        j = names.index(name)
        pos = [r for r in rows if r["labels"][j] == 1]
        out["manifestation_place"][name] = {"zone": zone, "n_positive": len(pos),
                                            "uniform_median": _median([r["uniform"][zone] for r in pos])}
        for m in SHARE_METHODS:
            out["manifestation_place"][name][m] = _median([r["shares"][m][j][zone] for r in pos if m in r["shares"]])
    full = [r for r in rows if "deletion" in r]
    out["n_full"] = len(full)
    ks = list(full[0]["deletion"]["random"])
    for m in [k for k in full[0]["deletion"] if k != "random"]:
        out["deletion"][m] = {}
        for j, name in enumerate(names):
            drop = np.array([[r["deletion"][m][k][j] for k in ks] for r in full])
            rand = np.array([[r["deletion"]["random"][k][j] for k in ks] for r in full])
            diff = (drop - rand).mean(1)
            lo, hi = _ci_by_patient(diff, [r["patient_id"] for r in full])
            out["deletion"][m][name] = {"mean_drop_by_k": dict(zip(ks, drop.mean(0).round(4).tolist())),
                                        "random_drop_by_k": dict(zip(ks, rand.mean(0).round(4).tolist())),
                                        "mean_excess": float(diff.mean()), "ci": [lo, hi],
                                        "share_nodules_steeper": float((diff > 0).mean()), "steeper": lo > 0}
    rand_rows = [r for r in rows if "randomisation" in r]
    out["n_randomised"] = len(rand_rows)
    if rand_rows:
        stages = list(rand_rows[0]["randomisation"])
        for m in rand_rows[0]["randomisation"][stages[0]]:
            out["randomisation"][m] = {name: {"full_patch": [_median([r["randomisation"][s][m][j][0]
                                                                      for r in rand_rows]) for s in stages],
                                              "visible": [_median([r["randomisation"][s][m][j][1]
                                                                   for r in rand_rows]) for s in stages]}
                                       for j, name in enumerate(names)}
    for j, name in enumerate(names):
        t = {k: np.array([r["terms"][k][j] for r in rows]) for k in rows[0]["terms"]}
        evidence = np.abs(t["image_map"]) + np.abs(t["image_global"]) + np.abs(t["descriptors"])
        share = np.abs(t["descriptors"]) / np.maximum(evidence, 1e-12)
        out["logit_terms"][name] = {**{f"median_abs_{k}": float(np.median(np.abs(v))) for k, v in t.items()},
                                    "median_descriptor_share": float(np.median(share)),
                                    "median_image_map_share": float(np.median(np.abs(t["image_map"]) / evidence))}
    write_text_atomic(folder / "results.json", json.dumps(out, indent=1) + "\n")
    write_text_atomic(folder / "results.md", markdown(out, names))
    return out


def _excess(d: dict) -> str:
    return f"{d['mean_excess']:+.3f} ({d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}){' ok' if d['steeper'] else ''}"


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(out: dict, names: list[str]) -> str:
    lines = [f"# Map quality on {out['n_nodules']} out-of-fold lidc-voi nodules ({out['n_patients']} patients)", "",
             "Criterion and definitions: README.md. Shares: medians over nodules of the shown mass (values >= 0.25 of "
             "the map's maximum) inside the reference mask dilated by 2 mm (`nodule`) and in the edge zone (air "
             "padding + outer 1.5 mm of the visible box, `edge`). `_visible`: the map set to 0 outside the CT the "
             "network saw; `_near`: also outside the nnU-Net nodule dilated by 5 mm (a display restriction: its "
             "`nodule` share is partly met by construction).", "",
             f"Uniform map over the visible box (what chance gives): nodule {_f(out['uniform']['nodule'])}, "
             f"edge {_f(out['uniform']['edge'])}.", "",
             "## Share inside the dilated nodule / in the edge zone (target >= 0.8 / <= 0.1)", "",
             "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m, per in out["shares"].items():
        lines.append(f"| {m} ({per['n_nodules']}) | " + " | ".join(
            f"{_f(per[n]['nodule_median'])} / {_f(per[n]['edge_median'])}" for n in names) + " |")
    lines += ["", "## Manifestation at its place (median share over positive nodules; uniform = chance)", "",
              "| output (zone, n) | uniform | " + " | ".join(SHARE_METHODS) + " |",
              "|---" * (len(SHARE_METHODS) + 2) + "|"]
    for name, p in out["manifestation_place"].items():
        lines.append(f"| {name} ({p['zone']}, {p['n_positive']}) | {_f(p['uniform_median'])} | "
                     + " | ".join(_f(p[m]) for m in SHARE_METHODS) + " |")
    lines += ["", f"## Model randomisation (Adebayo et al. 2018), {out['n_randomised']} nodules", "",
              "Median Spearman rank correlation of the trained member's map with the map of a copy re-initialised "
              "cumulatively from the logits down (stages: fc + descriptors, SAM + deep projection, head residual "
              "units, decoder, gates + prior branch, encoder downs, stem). Full patch / visible box only. "
              f"Target <= {TARGET_RHO} at every stage.", ""]
    for m, per in out["randomisation"].items():
        stages = len(per[names[0]]["full_patch"])
        lines += [f"**{m}**", "", "| output | " + " | ".join(f"stage {i}" for i in range(stages)) + " |",
                  "|---" * (stages + 1) + "|"]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{_f(a)} / {_f(b)}" for a, b in
                                                  zip(per[n]["full_patch"], per[n]["visible"])) + " |")
        lines.append("")
    lines += [f"## Deletion (logit drop, top-k% map voxels vs random voxels set to the patch mean), {out['n_full']} "
              "nodules", "",
              "Mean over k = 1, 2, 5, 10, 20 % of (map drop - random drop), mean over nodules with its 95% "
              "patient-bootstrap interval; steeper than random when the interval is above 0.", "",
              "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m, per in out["deletion"].items():
        lines.append(f"| {m} | " + " | ".join(
            _excess(per[n]) for n in names) + " |")
    lines += ["", "## Where each logit comes from (held-out member, per nodule)", "",
              "logit = image_map (what a map of the head can show) + image_global (max-pooled deepest features) + "
              "descriptors (size/shape/HU) + bias. Medians over nodules.", "",
              "| output | abs image_map | abs image_global | abs descriptors | abs bias | descriptor share | "
              "image_map share |", "|---|---|---|---|---|---|---|"]
    for n in names:
        t = out["logit_terms"][n]
        lines.append(f"| {n} | {_f(t['median_abs_image_map'])} | {_f(t['median_abs_image_global'])} | "
                     f"{_f(t['median_abs_descriptors'])} | {_f(t['median_abs_bias'])} | "
                     f"{_f(t['median_descriptor_share'])} | {_f(t['median_image_map_share'])} |")
    return "\n".join(lines) + "\n"
