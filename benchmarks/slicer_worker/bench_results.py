"""Main-thread time and resident memory to load one nodule's results into the scene (issue 20 item 2).

A real CT made 512 x 512 x 300: LIDC-IDRI-0001's 16 real DICOM slices (512 x 512, 0.70 x 0.70 x 2.5 mm) in the
middle, mirrored outwards slice by slice (numpy 'symmetric' padding) to 300 slices, so the scan is real lung
everywhere and the nodule sits where it was. The shipped model analyses the nodule once (engine, in this process)
and write_findings writes its folder as the worker does; the same finding is also written the old way, every
image over the whole CT (region.on_full_grid), to show what changed. Then, in a fresh process per format, on
slicer-core: the CT loaded as a volume node, and AnalysisLogic.loadResults timed (main thread) with the process's
resident memory (VmRSS) before and after, for 3 nodules (3 keys on the same folder) and a re-run of the first.

    python benchmarks/slicer_worker/bench_results.py --out benchmarks/slicer_worker/results_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import DATA_ROOT, write_stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "LungNoduleExplain"))
DATA = DATA_ROOT
SLICES = 300


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def padded_ct() -> tuple[sitk.Image, list[float]]:
    from LungNoduleExplainLib.volume import read_ct
    ct = read_ct(DATA / "lidc-ct" / "LIDC-IDRI-0001" / "dicom")
    nodule = next(n for n in json.loads((DATA / "lidc-ct" / "nodules.json").read_text())
                  if n["patient_id"] == "LIDC-IDRI-0001")
    array = sitk.GetArrayFromImage(ct)
    below = (SLICES - array.shape[0]) // 2
    padded = np.pad(array, ((below, SLICES - array.shape[0] - below), (0, 0), (0, 0)), mode="symmetric")
    image = sitk.GetImageFromArray(padded)
    image.SetSpacing(ct.GetSpacing())
    image.SetDirection(ct.GetDirection())
    # the real slices keep their physical place: the new first slice lies `below` slices before the old one
    image.SetOrigin(ct.TransformContinuousIndexToPhysicalPoint([0.0, 0.0, -float(below)]))
    return image, nodule["centroid_ras_mm"]


def write_results(folder: Path) -> dict:
    """The CT, the regional folder (as the worker writes it) and the same finding over the whole CT."""
    from LungNoduleExplainLib.analysis import Analyzer
    from LungNoduleExplainLib.region import on_full_grid
    from LungNoduleExplainLib.reports import write_findings
    ct, point = padded_ct()
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    finding = Analyzer(None, device="cpu").analyze(ct, point)
    write_findings([finding], ct, folder / "regional")
    finding.segmentation_probability = on_full_grid(finding.segmentation_probability, ct)
    for output in finding.outputs:
        output.activation_map = on_full_grid(output.activation_map, ct)
    written = Path(write_findings([finding], ct, folder / "full")).parent
    # the writer now keeps to the region; undo that for the old format's files
    for path in (written / "nodule-01").rglob("*.nrrd"):
        sitk.WriteImage(on_full_grid(sitk.ReadImage(str(path)), ct), str(path), True)
    sizes = {name: sum(p.stat().st_size for p in (folder / name / "nodule-01").rglob("*.nrrd"))
             for name in ("regional", "full")}
    return {"ct_size": list(ct.GetSize()), "point_ras": point, "outputs": len(finding.outputs),
            "nrrd_bytes_on_disk": sizes,
            "region": json.loads((folder / "regional" / "nodule-01" / "finding.json").read_text())["region"]}


def measure(folder: Path, layout: str) -> dict:
    """In this (fresh) process: load the CT, then the nodule's results 3 times under 3 keys and once more."""
    from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic, NoduleRequest
    from LungNoduleExplainSlicer.HeadlessScene import loadVolume, makeScene
    scene, logics = makeScene()
    ctNode = loadVolume(scene, folder / "ct.nrrd", "CT 512x512x300")
    logic = AnalysisLogic(scene)
    point = tuple(json.loads((folder / layout / "nodule-01" / "finding.json").read_text())["point_ras_mm"])
    rows = []

    def load(key: str, what: str) -> None:
        before, nodes = rss_mb(), scene.GetNumberOfNodes()
        start = time.perf_counter()
        logic.loadResults(ctNode, [NoduleRequest(key, key, point)], [folder / layout / "nodule-01"])
        seconds = time.perf_counter() - start
        rows.append({"load": what, "main_thread_s": round(seconds, 3), "rss_added_mb": round(rss_mb() - before, 1),
                     "nodes_added": scene.GetNumberOfNodes() - nodes})

    baseline = rss_mb()
    for n in (1, 2, 3):
        load(f"nodule-{n}", f"nodule {n}")
    for n in range(5):
        load("nodule-1", f"re-run {n + 1} of nodule 1 (old nodes replaced)")
    mapNode = next(iter(logic.mapNodes()))
    return {"layout": layout, "rss_with_ct_mb": round(baseline, 1), "loads": rows,
            "map_dimensions": list(mapNode.GetImageData().GetDimensions()),
            "rss_per_nodule_mb": round(float(np.mean([r["rss_added_mb"] for r in rows[:3]])), 1),
            "main_thread_median_s": round(float(np.median([r["main_thread_s"] for r in rows])), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process: one layout, printed as JSON
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-results-") as folder:
        written = write_results(Path(folder))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "LungNoduleExplain"), *sys.path])}
        results = {}
        for layout in ("regional", "full"):
            child = subprocess.run([sys.executable, __file__, "--measure", folder, layout], capture_output=True,
                                   text=True, env=env, check=True)
            results[layout] = json.loads(child.stdout.strip().splitlines()[-1])
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"written": written, "results": results, "commit": commit, "load_average_at_end": os.getloadavg()}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
        write_stamp(args.out, [DATA / "lidc-ct" / "nodules.json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
