"""Make Resources/Screenshots/analysis.png: the module's result on a real LIDC CT, drawn by Slicer's own slice
logic (slicer-core, no desktop needed) next to the module's results table.

    python Resources/make_screenshot.py [LIDC_CT_DIR]

Runs the real engine (the worker with the shipped model bundle) on LIDC-IDRI-0001 clicked at its readers'
nodule centroid. A screenshot of the desktop application can replace it once one is taken.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LungNoduleExplain"))
from LungNoduleExplainLib.volume import read_ct  # noqa: E402
from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic, NoduleRequest  # noqa: E402
from LungNoduleExplainSlicer.HeadlessScene import addSliceView, loadVolume, makeScene, renderAxialSlice  # noqa: E402

OUT = ROOT / "Resources" / "Screenshots" / "analysis.png"
PATIENT = "LIDC-IDRI-0001"


def main(ct_dir: Path) -> Path:
    centroid = next(n["centroid_ras_mm"] for n in json.loads((ct_dir / "nodules.json").read_text())
                    if n["patient_id"] == PATIENT)
    path = Path(tempfile.mkdtemp()) / "ct.nrrd"
    sitk.WriteImage(read_ct(ct_dir / PATIENT / "dicom"), str(path))
    scene, logics = makeScene(sliceCompositeNodes=0)
    slicer.mrmlScene = scene
    sliceLogic = addSliceView(scene, "Red", size=640)
    ctNode = loadVolume(scene, path, PATIENT)
    ctNode.GetDisplayNode().SetAutoWindowLevel(False)
    ctNode.GetDisplayNode().SetWindowLevel(1500, -600)  # lung window

    logic = AnalysisLogic(scene)
    logic.onProgress = lambda fraction, message: print(f"{fraction:4.0%} {message}")
    logic.startAnalysis(ctNode, [NoduleRequest("screenshot", "Nodule 1", tuple(centroid))], device="auto")
    outcome = logic.waitForFinished(timeout_s=900)
    if not outcome.succeeded:
        raise SystemExit(f"analysis failed: {outcome.message}")
    nodule = outcome.nodules[0]
    rgb = renderAxialSlice(sliceLogic, centroid[2])[::-1]

    figure, (view, panel) = plt.subplots(1, 2, figsize=(10, 5.6), gridspec_kw={"width_ratios": [1.15, 1]})
    figure.patch.set_facecolor("#2b2b2b")
    view.imshow(rgb)
    view.set_axis_off()
    view.set_title(f"{PATIENT}: {outcome.nodules[0].finding['outputs'][0]['name']} map over the CT "
                   "(values < 0.25 hidden)", color="white", fontsize=9)
    panel.set_axis_off()
    rows = [[o["name"], f"{o['probability']:.2f}", f"{o['threshold']:.2f}",
             "positive" if o.get("positive", o["probability"] >= o["threshold"]) else "negative"]
            for o in nodule.finding["outputs"]]
    table = panel.table(cellText=rows, colLabels=["output", "probability", "threshold", "result"], loc="center")
    table.scale(1, 1.5)
    panel.set_title("Lung Nodule Explain: Nodule 1 results", color="white", fontsize=10)
    figure.text(0.01, 0.01, "Rendered by Slicer's MRML slice logic (slicer-core). LIDC-IDRI, CC BY 3.0. "
                "Research use only.", color="#bbbbbb", fontsize=7)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=100, facecolor=figure.get_facecolor())
    logic.cleanup()
    del logics
    return OUT


if __name__ == "__main__":
    default = ROOT.parent / "shared" / "data" / "lidc-ct"
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
