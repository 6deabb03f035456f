"""Reference scales that tie a map's colour to its output: map_scale.json of the shipped bundle.

    PYTHONPATH=LungNoduleExplain python benchmarks/map_quality/map_scale.py --oof oof/nnunet \
        --out benchmarks/map_quality [--install]

For every lidc-voi nodule, the ensemble member that never saw its patient gives its unnormalised maps (methods
"contribution" and "sam", positive part, 0 outside the visible box); the scale of member k and output j is the
95th percentile, over member k's held-out nodules, of the map's maximum. The product divides a member's map by it
and clips at 1, so a colour says "this strong compared with the strongest 5% of held-out nodules for this
output" instead of "the strongest place in this patch" whatever the evidence. Writes OUT/map_scale.json (and, with
--install, adds it to the bundle: manifest checksum). Then scores the displayed (scaled) maps of the map_quality
sample with the same zones and cut: OUT/scaled_display.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from LungNoduleExplainLib import attribution as A
from LungNoduleExplainLib.atomic import write_text_atomic
from LungNoduleExplainLib.bundle import add_map_scale, default_bundle_path, load_bundle
from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.data.voi_table import patient_folds, read_image, read_voi_table
from LungNoduleExplainLib.patch import PatchGeometry, resample_to_grid, resample_with_voi

from map_quality import DISPLAY_CUT, EDGE_MM, NODULE_MARGIN_MM, sample_records  # beside this script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, write_stamp  # noqa: E402

PERCENTILE = 95.0
METHODS = ("contribution", "sam")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--oof", type=runs_path, default=runs_path("oof/nnunet"), help="under $LUNGNODULE_RUNS")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--nodules", type=int, default=100, help="the map_quality sample scored afterwards")
    parser.add_argument("--install", action="store_true", help="add map_scale.json to the bundle")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle_path = args.model or default_bundle_path()
    bundle = load_bundle(bundle_path)
    names = bundle.output_names
    records = read_voi_table(args.data, bundle.task_set)
    folds = patient_folds(records, bundle.members, int(bundle.manifest["training"]["seed"]))
    sample = set(sample_records(records, args.nodules, 0))
    peaks = {m: [[] for _ in range(bundle.members)] for m in METHODS}
    kept: dict[int, dict] = {}
    for k, fold in enumerate(folds):
        net = bundle.model.members[k].eval()
        for i in fold:
            r = records[i]
            patches = build_patch_set([r], bundle.task_set, str(args.oof), channels=bundle.network.inputs)
            x = torch.from_numpy(patches.images.astype(np.float32))
            p = torch.from_numpy(patches.priors[:, None].astype(np.float32))
            d = torch.from_numpy(patches.descriptors.astype(np.float32))
            geometry = PatchGeometry.centred_at(r.center_lps, bundle.spacing, bundle.patch_size)
            ct = read_image(r.image_path, f"image of case {r.case_id}")
            visible = resample_with_voi(ct, geometry)[1]
            for m in METHODS:
                maps = A.mask_maps(A.member_maps(net, x, p, d, m), visible)
                peaks[m][k].append(maps.reshape(len(names), -1).max(1))
                if i in sample and m == "contribution":
                    kept[i] = {"maps": maps, "visible": visible, "k": k, "ct": ct, "geometry": geometry}
        print(f"member {k}: {len(fold)} held-out nodules", flush=True)
    scales = {m: np.array([np.percentile(np.array(peaks[m][k]), PERCENTILE, axis=0) for k in range(bundle.members)])
              for m in METHODS}
    document = {"format_version": A.MAP_SCALE_FORMAT,
                "statistic": f"{PERCENTILE:g}th percentile, over the member's held-out lidc-voi nodules, of the "
                             "maximum of its unnormalised map (positive part, 0 outside the visible box)",
                "n_nodules_per_member": [len(f) for f in folds],
                "methods": {m: {n: [float(v) for v in scales[m][:, j]] for j, n in enumerate(names)}
                            for m in METHODS}}
    write_text_atomic(args.out / A.MAP_SCALE_NAME, json.dumps(document, indent=1) + "\n")
    write_stamp(args.out / A.MAP_SCALE_NAME, [args.data, bundle_path])
    if args.install:
        add_map_scale(bundle_path, document)
        print(f"installed {A.MAP_SCALE_NAME} in {bundle_path}")
    write_text_atomic(args.out / "scaled_display.json", json.dumps(score_scaled(records, kept, scales, names),
                                                                   indent=1) + "\n")
    return 0


def score_scaled(records: list, kept: dict, scales: dict, names: list[str]) -> dict:
    """Nodule and edge share of the displayed contribution maps (scaled, cut at DISPLAY_CUT) on the sample."""
    rows = {n: {"nodule": [], "edge": [], "empty": 0} for n in names}
    for i, item in kept.items():
        spacing_zyx = tuple(reversed(item["geometry"].spacing))
        mask_img = read_image(records[i].mask_path, "mask", on_grid_of=item["ct"])
        mask = resample_to_grid(mask_img, item["geometry"], default_value=0.0) >= 0.5
        nodule = A.within_mm(mask, NODULE_MARGIN_MM, spacing_zyx)
        edge = A.edge_zone(item["visible"], EDGE_MM, spacing_zyx)
        shown = np.clip(item["maps"] / scales["contribution"][item["k"]].reshape(-1, 1, 1, 1), 0, 1)
        for j, n in enumerate(names):
            mass = np.where(shown[j] >= DISPLAY_CUT, shown[j], 0.0)
            total = float(mass.sum())
            if total == 0:
                rows[n]["empty"] += 1
                continue
            rows[n]["nodule"].append(float(mass[nodule].sum()) / total)
            rows[n]["edge"].append(float(mass[edge].sum()) / total)
    return {"n_nodules": len(kept), "method": "contribution, visible box, scaled by map_scale.json",
            "outputs": {n: {"nodule_median": float(np.median(v["nodule"])) if v["nodule"] else None,
                            "edge_median": float(np.median(v["edge"])) if v["edge"] else None,
                            "empty_maps": v["empty"]} for n, v in rows.items()}}


if __name__ == "__main__":
    sys.exit(main())
