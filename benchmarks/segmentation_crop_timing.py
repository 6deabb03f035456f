"""Time the shipped segmentation model per click on lidc-ct's three DICOM series, default vs one-window crop.

    nice -n 10 python benchmarks/segmentation_crop_timing.py [MODEL_DIR] [LIDC_CT_DIR]
"""

import json
import os
import sys
import time

import numpy as np
import torch

from LungNoduleExplainLib.segmentation import NoduleSegmenter
from LungNoduleExplainLib.volume import read_ct

if __name__ == "__main__":
    model = sys.argv[1] if len(sys.argv) > 1 else "LungNoduleExplain/LungNoduleExplainLib/models/default/segmentation"
    ct_root = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/lidc-ct"
    torch.set_num_threads(2)
    segmenter = NoduleSegmenter(model, device="cpu")
    print("folds", segmenter.folds)
    for nodule in json.load(open(os.path.join(ct_root, "nodules.json"))):
        ct = read_ct(os.path.join(ct_root, nodule["patient_id"], "dicom"))
        for crop in ((48, 48, 40), (33.75, 33.75, 40)):
            segmenter.segment(ct, nodule["centroid_lps_mm"], crop_mm=crop)  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            result = segmenter.segment(ct, nodule["centroid_lps_mm"], crop_mm=crop)
            diameter = 2 * (3 * result.volume_mm3 / (4 * np.pi)) ** (1 / 3)
            print(f"| {nodule['patient_id']} | {crop} | {nodule['diam_mm_mean']:.1f} | {result.volume_mm3:.0f} | "
                  f"{diameter:.1f} | {time.perf_counter() - wall:.2f} | {time.process_time() - cpu:.2f} |")
    print("load", os.getloadavg())
