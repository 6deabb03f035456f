"""One click's round trip through a real PACS, timed by stage (issue 22, item 3).

A local Orthanc with its DICOMweb plugin (started here as the tests start it, on a free port with its own storage)
receives a real LIDC series through its REST API (set-up, not timed). Then, per click, the stages `analyze
--dicomweb ... --store` goes through: retrieve the series (WADO-RS), read and check it, analyse the click (nnU-Net +
classifier + maps, the shipped model on this machine's device), build the DICOM objects (SEG, Parametric Maps, SR),
write them, store them (STOW-RS, the SR last). Model loading is timed once, apart: a Slicer session or a PACS
service keeps the model loaded between clicks. Writes roundtrip.json and prints a Markdown table.

    python benchmarks/dicom_roundtrip/roundtrip.py --patients LIDC-IDRI-0001 LIDC-IDRI-0003 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing"))  # the tests' Orthanc launcher
sys.path.insert(0, str(ROOT / "benchmarks"))  # common
from common import DATA_ROOT, write_stamp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "lidc-ct")
    parser.add_argument("--patients", nargs="+", default=["LIDC-IDRI-0001", "LIDC-IDRI-0003"])
    parser.add_argument("--repeats", type=int, default=3, help="clicks per patient")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("roundtrip.json"))
    args = parser.parse_args()

    from LungNoduleExplainLib.analysis import Analyzer
    from LungNoduleExplainLib.bundle import default_bundle_path
    from LungNoduleExplainLib.dicom import web
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter
    from orthanc_server import PASSWORD, USER, run_orthanc

    nodules = {n["patient_id"]: n for n in json.loads((args.data / "nodules.json").read_text())}
    os.environ[web.USER_VARIABLE], os.environ[web.PASSWORD_VARIABLE] = USER, PASSWORD
    start = time.perf_counter()
    # every repeat is the same click: nothing may come from the segmenter's memory of recent crops
    analyzer = Analyzer(None, device=args.device, segmenter=NoduleSegmenter(
        default_bundle_path() / "segmentation", device=args.device, recent_crops=0))
    load_s = time.perf_counter() - start
    rows = []
    with tempfile.TemporaryDirectory(prefix="lungnodule-roundtrip-") as scratch:
        for server in run_orthanc(Path(scratch)):
            client = web.connect(server.dicomweb)
            for patient in args.patients:
                files = sorted((args.data / patient / "dicom").glob("*.dcm"))
                server.upload(files)
                for repeat in range(args.repeats):
                    stages = click(client, analyzer, files[0], nodules[patient]["centroid_lps_mm"], Path(scratch))
                    rows.append({"patient": patient, "repeat": repeat, "images": len(files), **stages})
                    print(f"{patient} #{repeat}: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()),
                          file=sys.stderr)
    result = {"commit": _commit(), "device": args.device, "cpu": platform.processor() or platform.machine(),
              "threads": _threads(), "model_load_s": round(load_s, 2), "clicks": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_stamp(args.out, [args.data / "nodules.json"])
    print(table(result))
    return 0


def click(client, analyzer, first_file: Path, point_lps, scratch: Path) -> dict[str, float]:  # noqa: ANN001
    """The stages of one `analyze --dicomweb ... --store` click, seconds each (and their total)."""
    import pydicom

    from LungNoduleExplainLib.dicom import web
    from LungNoduleExplainLib.dicom.objects import build_dicom_results, write_dicom
    from LungNoduleExplainLib.dicom.series import find_series
    from LungNoduleExplainLib.volume import read_dicom_series

    header = pydicom.dcmread(first_file, stop_before_pixels=True)
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage] = now - clock
        clock = now

    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        web.retrieve_series(client, header.StudyInstanceUID, header.SeriesInstanceUID, folder)
        lap("retrieve")
        series = find_series(folder)
        ct = read_dicom_series(series, Path(folder))
        lap("read")
        finding = analyzer.analyze(ct, point_lps, "lps", classify_anyway=True)
        lap("analyse")
        results = build_dicom_results([finding], ct, series)
        lap("build_dicom")
        write_dicom(results, Path(folder) / "out")
        lap("write_dicom")
        web.store_results(client, results.segmentation_and_maps, results.report)
        lap("store")
    times["total"] = sum(times.values())
    return {k: round(v, 3) for k, v in times.items()}


def table(result: dict) -> str:
    clicks = result["clicks"]
    stages = [k for k in clicks[0] if k not in ("patient", "repeat", "images")]
    lines = [f"Model load (once): {result['model_load_s']} s; device {result['device']}, {result['threads']} threads; "
             f"commit {result['commit']}", "", "| patient | images | " + " | ".join(f"{s} (s)" for s in stages) + " |",
             "|---|---|" + "---|" * len(stages)]
    for patient in dict.fromkeys(c["patient"] for c in clicks):
        mine = [c for c in clicks if c["patient"] == patient]
        medians = [statistics.median(c[s] for c in mine) for s in stages]
        lines.append(f"| {patient} (median of {len(mine)}) | {mine[0]['images']} | "
                     + " | ".join(f"{m:.2f}" for m in medians) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
