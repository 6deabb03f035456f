"""Place off-nodule clicks on the real LIDC CTs by a stated rule, and write them to off_nodule_points.csv.

    python benchmarks/nodule_gate/off_nodule_points.py --ct-dir lidc-ct

Rule (per CT; HU on the CT's own voxels; distances in mm by Euclidean distance transforms):
- body: the largest 3D component of HU > -400, holes filled per axial slice; lung: body voxels below -400 HU in
  components of at least 20 ml; lung region: the lung with holes filled per slice (vessels inside it included).
- every point is farther than the nodule's radius (nodules.json diam_mm_mean / 2) + 10 mm from its centroid.
- lung: -950..-750 HU, >= 10 mm inside the lung region, no voxel above -500 HU within 3 mm (no vessel at hand).
- lung_near_pleura: -950..-750 HU, 6-10 mm inside the lung region (the issue's "normal lung ~8 mm from the pleura").
- vessel: -50..150 HU, >= 5 mm inside the lung region (soft tissue surrounded by lung).
- chest_wall: -50..150 HU, outside the lung region, 2-8 mm from it, > 60 mm left or right of the body's midline.
- mediastinum: 0..100 HU, outside the lung region, >= 5 mm from it, within 20 mm of the body's midline and in the
  front two thirds of the body (not the spine).
- bone: > 400 HU, >= 2 mm outside the lung region (ribs, vertebrae, sternum; not contrast in lung vessels).
Two points per class per CT, drawn uniformly from the eligible voxels with numpy's default_rng(SEED).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LungNoduleExplainLib.volume import read_ct
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, write_stamp  # noqa: E402

SEED = 19
PER_CLASS = 2
NODULE_MARGIN_MM = 10.0
CLASSES = ("lung", "lung_near_pleura", "vessel", "chest_wall", "mediastinum", "bone")


def masks(hu: np.ndarray, spacing_zyx: np.ndarray) -> dict[str, np.ndarray]:
    """Body, lung region and the distances (mm) inside and outside the lung region, arrays [z, y, x]."""
    labels, n = ndimage.label(hu > -400)
    sizes = ndimage.sum(np.ones_like(hu), labels, range(1, n + 1))
    body = labels == (1 + int(np.argmax(sizes)))
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    low = body & (hu < -400)
    labels, n = ndimage.label(low)
    sizes = ndimage.sum(np.ones_like(hu), labels, range(1, n + 1)) * float(np.prod(spacing_zyx))
    lung = np.isin(labels, 1 + np.flatnonzero(sizes >= 20000.0))
    region = np.stack([ndimage.binary_fill_holes(s) for s in lung])
    return {"body": body, "region": region,
            "inside": ndimage.distance_transform_edt(region, sampling=spacing_zyx),
            "outside": ndimage.distance_transform_edt(~region, sampling=spacing_zyx),
            "dense_near": ndimage.maximum_filter(hu, size=tuple(int(2 * np.ceil(3.0 / s) + 1) for s in spacing_zyx))}


def eligible(name: str, hu: np.ndarray, m: dict, x_mm: np.ndarray, y_mm: np.ndarray) -> np.ndarray:
    """Boolean [z, y, x] of the voxels class `name` may use (the module docstring's rule)."""
    body_x = x_mm[m["body"]].mean()
    body_y0, body_y1 = y_mm[m["body"]].min(), y_mm[m["body"]].max()
    soft = (hu >= -50) & (hu <= 150)
    parenchyma = (hu >= -950) & (hu <= -750)
    if name == "lung":
        return parenchyma & (m["inside"] >= 10.0) & (m["dense_near"] < -500)
    if name == "lung_near_pleura":
        return parenchyma & (m["inside"] >= 6.0) & (m["inside"] <= 10.0)
    if name == "vessel":
        return soft & (m["inside"] >= 5.0)
    if name == "chest_wall":
        return soft & ~m["region"] & (m["outside"] >= 2.0) & (m["outside"] <= 8.0) & (np.abs(x_mm - body_x) > 60)
    if name == "mediastinum":
        front = y_mm < body_y0 + 2.0 * (body_y1 - body_y0) / 3.0  # LPS y grows to the back
        return ((hu >= 0) & (hu <= 100) & ~m["region"] & (m["outside"] >= 5.0) & m["body"]
                & (np.abs(x_mm - body_x) <= 20.0) & front)
    if name == "bone":
        return (hu > 400) & m["body"] & (m["outside"] >= 2.0)
    raise ValueError(f"unknown class {name!r}; expected one of {CLASSES}")


def place(ct: sitk.Image, nodule: dict, rng: np.random.Generator) -> list[dict]:
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    spacing = np.asarray(ct.GetSpacing())[::-1]
    m = masks(hu, spacing)
    k, j, i = np.indices(hu.shape)
    # LPS of every voxel (axis-aligned series: direction is the identity for these CTs)
    if not np.allclose(ct.GetDirection(), np.eye(3).ravel()):
        raise ValueError("expected an axis-aligned CT (identity direction)")
    origin = np.asarray(ct.GetOrigin())
    x_mm, y_mm, z_mm = (origin[a] + (i, j, k)[a] * ct.GetSpacing()[a] for a in range(3))
    centre = np.asarray(nodule["centroid_lps_mm"])
    away = np.sqrt((x_mm - centre[0]) ** 2 + (y_mm - centre[1]) ** 2 + (z_mm - centre[2]) ** 2)
    away = away > nodule["diam_mm_mean"] / 2.0 + NODULE_MARGIN_MM
    rows = []
    for name in CLASSES:
        candidates = np.argwhere(eligible(name, hu, m, x_mm, y_mm) & away)
        if len(candidates) == 0:
            print(f"{nodule['patient_id']}: no voxel fits class {name}", file=sys.stderr)
            continue
        for z, y, x in candidates[rng.choice(len(candidates), min(PER_CLASS, len(candidates)), replace=False)]:
            lps = ct.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
            rows.append({"patient_id": nodule["patient_id"], "kind": name, "x_lps": round(lps[0], 2),
                         "y_lps": round(lps[1], 2), "z_lps": round(lps[2], 2), "hu": round(float(hu[z, y, x]), 1),
                         "mm_inside_lung": round(float(m["inside"][z, y, x]), 1),
                         "mm_outside_lung": round(float(m["outside"][z, y, x]), 1),
                         "mm_from_nodule": round(float(np.linalg.norm(np.asarray(lps) - centre)), 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct-dir", type=data_path, default=data_path("lidc-ct"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("off_nodule_points.csv"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(SEED)
    rows = []
    for nodule in json.loads((args.ct_dir / "nodules.json").read_text()):
        ct = read_ct(args.ct_dir / nodule["patient_id"] / "dicom")
        rows += place(ct, nodule, rng)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_stamp(args.out, [args.ct_dir / "nodules.json"])
    print(f"{len(rows)} points -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
