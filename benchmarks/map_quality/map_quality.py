"""Do the activation maps point at the evidence? Out-of-fold lidc-voi nodules, every output, several map methods.

    python benchmarks/map_quality/map_quality.py --data lidc-voi --oof oof/nnunet \
        --out benchmarks/map_quality --nodules 100 [--shard 0/2]   # then --summarise

Criterion (README.md, written before the figures): per output, median share of the shown map mass inside the
reference mask dilated by 2 mm >= 0.8; share in the box edge <= 0.1; Spearman rank correlation with the maps of a
network whose layers were re-initialised from the logits down <= 0.2; deleting the top-k% map voxels lowers the
logit more than deleting as many random voxels, for every output.

Each nodule is scored by the one ensemble member that never saw its patient (patient_folds as make_oof.py), on
the patch build_patch_set cuts (centred on the table centre, VOI padded with air) with the out-of-fold nnU-Net
prior. Per nodule a JSON line goes to OUT/per_nodule.jsonl (reruns skip the cases already there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import stats

from LungNoduleExplainLib import attribution as A
from LungNoduleExplainLib.atomic import write_text_atomic
from LungNoduleExplainLib.bundle import load_bundle
from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.data.voi_table import patient_folds, read_image, read_voi_table
from LungNoduleExplainLib.patch import PatchGeometry, resample_to_grid, resample_with_voi
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, runs_path, write_stamp  # noqa: E402

DISPLAY_CUT = 0.25
NODULE_MARGIN_MM = 2.0
EDGE_MM = 1.5
SHELL_MM = 1.5
NEAR_MM = 5.0  # display restriction tried as a fix: the segmented (nnU-Net) nodule dilated by this
CALCIUM_HU = 200.0
DELETE_PERCENT = (1, 2, 5, 10, 20)
RANDOM_DRAWS = 3
RANDOMISE_EVERY = 2  # the cascade runs on every 2nd nodule (CPU)
DELETION_METHODS = ("sam", "contribution_visible", "gradcam", "occlusion")
RANDOMISED_METHODS = ("sam", "contribution", "gradcam")


def sample_records(records: list, n: int, seed: int) -> list[int]:
    """Whole patients in a seeded random order until >= n nodules (all nodules of a patient or none)."""
    patients = sorted({r.patient_id for r in records})
    np.random.default_rng(seed).shuffle(patients)
    chosen, count = set(), 0
    for p in patients:
        if count >= n:
            break
        chosen.add(p)
        count += sum(r.patient_id == p for r in records)
    return [i for i, r in enumerate(records) if r.patient_id in chosen]


def shares(shown: np.ndarray, zones: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Share of the shown mass (values >= DISPLAY_CUT of a max-normalised map) in each zone; None when empty."""
    mass = np.where(shown >= DISPLAY_CUT, shown, 0.0)
    total = float(mass.sum())
    return {z: (float(mass[m].sum()) / total if total > 0 else None) for z, m in zones.items()}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rho = stats.spearmanr(a.ravel(), b.ravel())[0]
    return float(rho) if np.isfinite(rho) else 0.0


def method_maps(net, x, p, d, visible: np.ndarray, near: np.ndarray, with_occlusion: bool = True
                ) -> dict[str, np.ndarray]:
    """Every method's displayed map [n_outputs, D, H, W], max-normalised to [0, 1]."""
    with torch.no_grad():
        _, sam = net.activation_maps(x, p, d)
        contribution = A.contribution_maps(net, x, p, d)
    out = {"sam": sam[0].numpy(), "contribution": A.max_normalised(contribution[0].numpy())}
    out["gradcam"] = A.max_normalised(A.gradcam_maps(net, x, p, d)[0].numpy())
    if with_occlusion:
        out["occlusion"] = A.max_normalised(A.occlusion_maps(net, x, p, d)[0].numpy())
    for name in list(out):
        out[f"{name}_visible"] = A.max_normalised(A.mask_maps(out[name], visible))
    out["sam_near"] = A.max_normalised(A.mask_maps(out["sam"], visible & near))
    out["contribution_near"] = A.max_normalised(A.mask_maps(out["contribution"], visible & near))
    return out


@torch.no_grad()
def deletion(net, x, p, d, maps: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """Logit drop when the top-k% voxels of each map (or random voxels) are set to the patch mean."""
    n_vox = int(np.prod(x.shape[2:]))
    mean = float(x.mean())
    base = net(x, p, d)[0].numpy()
    jobs, keys = [], []
    for k in DELETE_PERCENT:
        count = int(round(n_vox * k / 100))
        for r in range(RANDOM_DRAWS):
            jobs.append(rng.choice(n_vox, count, replace=False))
            keys.append(("random", k, r))
        for method in DELETION_METHODS:
            for j in range(base.shape[0]):
                order = np.lexsort((rng.random(n_vox), -maps[method][j].ravel()))  # random tie-break
                jobs.append(order[:count])
                keys.append((method, k, j))
    drops = np.empty((len(jobs), base.shape[0]), dtype=np.float32)
    for lo in range(0, len(jobs), 32):
        chunk = jobs[lo:lo + 32]
        xs = x.repeat(len(chunk), 1, 1, 1, 1)
        flat = xs.view(len(chunk), x.shape[1], -1)
        for i, idx in enumerate(chunk):
            flat[i, :, torch.from_numpy(idx)] = mean
        n = len(chunk)
        drops[lo:lo + n] = base[None] - net(xs, p.expand(n, -1, -1, -1, -1), d.expand(n, -1)).numpy()
    out: dict = {"random": {str(k): drops[[i for i, key in enumerate(keys) if key[0] == "random" and key[1] == k]]
                            .mean(0).tolist() for k in DELETE_PERCENT}}
    for method in DELETION_METHODS:
        out[method] = {str(k): [float(drops[keys.index((method, k, j)), j]) for j in range(base.shape[0])]
                       for k in DELETE_PERCENT}
    return out


def nodule_row(record, fold: int, net, x, p, d, randomised: list | None, rng, bundle, full: bool = True) -> dict:
    """Everything measured on one nodule (JSON-ready); `net` is the member that never saw its patient. Without
    `full`, only the cheap maps' shares (no occlusion, deletion or randomisation)."""
    spacing = tuple(float(s) for s in bundle.spacing)
    geometry = PatchGeometry.centred_at(record.center_lps, bundle.spacing, bundle.patch_size)
    ct = read_image(record.image_path, f"image of case {record.case_id}")
    hu, visible = resample_with_voi(ct, geometry)
    mask_img = read_image(record.mask_path, f"mask of case {record.case_id}", on_grid_of=ct)
    mask = resample_to_grid(mask_img, geometry, default_value=0.0) >= 0.5
    spacing_zyx = tuple(reversed(spacing))
    near = A.within_mm(p[0, 0].numpy() >= 0.5, NEAR_MM, spacing_zyx)
    zones = {"nodule": A.within_mm(mask, NODULE_MARGIN_MM, spacing_zyx),
             "edge": A.edge_zone(visible, EDGE_MM, spacing_zyx), "padding": ~visible,
             "shell": A.within_mm(mask, SHELL_MM, spacing_zyx) & (~mask | A.within_mm(~mask, SHELL_MM, spacing_zyx)),
             "calcium": mask & (hu > CALCIUM_HU)}
    with torch.no_grad():
        logits = net(x, p, d)[0].numpy()
        terms = {k: v[0].numpy() for k, v in A.logit_terms(net, x, p, d).items()}
    maps = method_maps(net, x, p, d, visible, near, with_occlusion=full)
    row = {"case_id": record.case_id, "patient_id": record.patient_id, "fold": fold,
           "diameter_mm": record.diameter_mm, "mask_voxels": int(mask.sum()), "visible_fraction": float(visible.mean()),
           "logits": logits.tolist(), "terms": {k: v.tolist() for k, v in terms.items()},
           "uniform": {z: float((m & visible).sum() / max(visible.sum(), 1)) for z, m in zones.items()},
           "shares": {name: [shares(m[j], zones) for j in range(m.shape[0])] for name, m in maps.items()}}
    if full:
        row["deletion"] = deletion(net, x, p, d, maps, rng)
    if randomised is not None and full:
        vis = visible.ravel()
        row["randomisation"] = {}
        for stage, rnet in enumerate(randomised):
            rmaps = method_maps(rnet, x, p, d, visible, near, with_occlusion=False)
            row["randomisation"][str(stage)] = {
                name: [[spearman(maps[name][j], rmaps[name][j]),
                        spearman(maps[name][j].ravel()[vis], rmaps[name][j].ravel()[vis])]
                       for j in range(logits.shape[0])] for name in RANDOMISED_METHODS}
    return row


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    bundle = load_bundle(args.model)
    records = read_voi_table(args.data, bundle.task_set)
    folds = patient_folds(records, bundle.members, int(bundle.manifest["training"]["seed"]))
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    chosen = sample_records(records, args.nodules, args.seed)
    shard, shards = (int(v) for v in args.shard.split("/"))
    chosen = chosen[shard::shards]
    out_file = args.out / f"per_nodule.{shard}.jsonl"
    done = set()
    if out_file.is_file():
        done = {json.loads(line)["case_id"] for line in out_file.read_text().splitlines() if line.strip()}
    todo = [i for i in chosen if records[i].case_id not in done]
    print(f"shard {shard}/{shards}: {len(chosen)} nodules, {len(todo)} to do", flush=True)
    members = [m.eval() for m in bundle.model.members]
    randomised = {k: [A.randomised_copy(m, s, seed=args.seed + s) for s in range(len(A.CASCADE))]
                  for k, m in enumerate(members)}
    rng = np.random.default_rng([args.seed, shard])
    for n, i in enumerate(todo):
        start = time.perf_counter()
        patches = build_patch_set([records[i]], bundle.task_set, str(args.oof), channels=bundle.network.inputs)
        x = torch.from_numpy(patches.images.astype(np.float32))
        p = torch.from_numpy(patches.priors[:, None].astype(np.float32))
        d = torch.from_numpy(patches.descriptors.astype(np.float32))
        k = fold_of[i]
        rand = randomised[k] if chosen.index(i) % RANDOMISE_EVERY == 0 else None
        full = chosen.index(i) < args.full_nodules // shards
        row = nodule_row(records[i], k, members[k], x, p, d, rand, rng, bundle, full)
        row["labels"] = [None if np.isnan(v) else int(v) for v in patches.labels[0]]
        with out_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{n + 1}/{len(todo)} {records[i].case_id} {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=data_path, default=data_path("lidc-voi"), help="under $LUNGNODULE_DATA")
    parser.add_argument("--oof", type=runs_path, default=runs_path("oof/nnunet"), help="out-of-fold nnU-Net maps under $LUNGNODULE_RUNS")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--nodules", type=int, default=100, help="at least this many, whole patients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-nodules", type=int, default=1000,
                        help="occlusion, deletion and randomisation only on the first N chosen nodules (CPU)")
    parser.add_argument("--shard", default="0/1", help="i/n: this process scores every n-th chosen nodule")
    parser.add_argument("--summarise", action="store_true", help="write results.md/json from the jsonl files")
    args = parser.parse_args(argv)
    if args.summarise:
        from summarise import summarise  # noqa: PLC0415  (beside this script)
        bundle = load_bundle(args.model)
        summarise(args.out, bundle.output_names)
        write_stamp(args.out / "results.md", [args.data, bundle.path])
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
