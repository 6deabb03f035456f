"""Out-of-fold Dice of a segmentation model with the full crop for every nodule (not the default two-step crop).

    python benchmarks/segmentation_full_crop_dice.py --model SEG_MODEL --data ../shared/data/lidc-voi \
        --out benchmarks/segmentation_full_crop_dice.md

Each nodule is segmented by the fold model that never saw its patient (folds from the model's
cross_validation.json), in `NoduleSegmenter.crop_mm` (48 x 48 x 40 mm, four overlapping windows) around its table
centre; Dice of the component there against the reference mask; 95% CI by patient. The default inference path's
figure (one window first) is in benchmarks/segmentation_results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from LungNoduleExplainLib.data.voi_table import read_voi_table
    from LungNoduleExplainLib.segmentation import NoduleSegmenter, segmentation_dice
    from LungNoduleExplainLib.segmentation.metrics import bootstrap_mean_ci

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = {r.case_id: r for r in read_voi_table(args.data, require_masks=True)}
    fold_of_case = json.loads((args.model / "cross_validation.json").read_text())["fold_of_case"]
    scores: dict[str, float] = {}
    rows = []
    for fold in sorted(set(fold_of_case.values())):
        segmenter = NoduleSegmenter(args.model, folds=(fold,), device="cpu")
        cases = [c for c, k in fold_of_case.items() if k == fold]
        started = time.perf_counter()
        scores.update(segmentation_dice(segmenter, [records[c] for c in cases], crop_mm=segmenter.crop_mm))
        rows.append(f"| fold {fold} | {len(cases)} | {np.mean([scores[c] for c in cases]):.3f} | "
                    f"{time.perf_counter() - started:.0f} |")
        print(rows[-1], flush=True)
    mean, low, high = bootstrap_mean_ci(scores, {c: records[c].patient_id for c in scores})
    text = "\n".join([
        "# Out-of-fold Dice with the full crop for every nodule", "",
        f"Command: `python {' '.join(sys.argv)}`", "",
        f"Crop {' x '.join(f'{v:g}' for v in segmenter.crop_mm)} mm (x y z) around each table centre, one fold "
        "model per nodule (the one that never saw its patient), component at the centre vs the reference mask.", "",
        "| folds | nodules | mean Dice | seconds |", "|---|---|---|---|", *rows, "",
        f"**All {len(scores)} nodules of {len({records[c].patient_id for c in scores})} patients: {mean:.4f} "
        f"(95% CI by patient {low:.4f}-{high:.4f})**", ""])
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
