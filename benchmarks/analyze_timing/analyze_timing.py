"""Click-to-Finding time per stage and peak memory, on a real LIDC CT already in memory.

    nice -n 10 python benchmarks/analyze_timing/analyze_timing.py --repeats 5 --cpus 2            # 2 CPU cores
    python benchmarks/analyze_timing/analyze_timing.py --repeats 10 --device cuda --append        # on a GPU machine

Stages: reading the CT and loading the model happen once (reported apart); each repeat then clicks the nodule
centroid of `nodules.json` and reads the stages the engine itself records in Finding.timings_s (crop, segment,
classify, maps, paste back, ...), plus the wall time of the whole `analyze` call; writing the report folder is
timed once at the end. Peak memory: the process's maximum resident set size (resource.getrusage), and on CUDA
torch's peak allocation. Results go to benchmarks/analyze_timing/results.md (a new file, or a section appended).
Target (issue 4): at most 3 s from point to Finding on 2 CPU cores for a CT already in memory.
The process CPU time per click is recorded beside the wall time: on a machine shared with other work the wall
time measures the others too, while CPU time / threads is what the click costs on cores of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common
from common import data_path, write_stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TARGET_S = 3.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patient", default="LIDC-IDRI-0001", help="series under lidc-ct/ (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed clicks after one warm-up (default 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--cpus", type=int, default=None,
                        help="pin the process to this many CPU cores and torch threads (e.g. 2)")
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the shipped one)")
    parser.add_argument("--segmentation", type=Path, default=None,
                        help="nnU-Net model folder to use instead of the bundle's own segmentation/ (e.g. while "
                             "the shipped bundle has none yet)")
    parser.add_argument("--note", default="", help="a sentence recorded with the results (e.g. what the models are)")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--append", action="store_true", help="append a section instead of replacing --out")
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def pin_cpus(n: int) -> str:
    import torch

    cores = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(n)
    return f"pinned to cores {cores}, torch threads {torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from LungNoduleExplainLib.analysis import Analyzer
    from LungNoduleExplainLib.reports import write_findings
    from LungNoduleExplainLib.volume import read_ct

    pinning = pin_cpus(args.cpus) if args.cpus else f"all {os.cpu_count()} cores, torch threads " \
                                                     f"{torch.get_num_threads()}"
    ct_dir = data_path("lidc-ct")
    nodule = next(n for n in json.loads((ct_dir / "nodules.json").read_text()) if n["patient_id"] == args.patient)
    point = nodule["centroid_ras_mm"]

    once: dict[str, float] = {}
    t0 = time.perf_counter()
    ct = read_ct(ct_dir / args.patient / "dicom")
    once["read CT (DICOM)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from LungNoduleExplainLib.bundle import default_bundle_path
    from LungNoduleExplainLib.segmentation.predict import NoduleSegmenter
    # every repeat is the same click: nothing may be answered from the segmenter's memory of recent crops
    segmenter = NoduleSegmenter(args.segmentation or (args.model or default_bundle_path()) / "segmentation",
                                device=args.device, recent_crops=0)
    analyzer = Analyzer(bundle=args.model, device=args.device, segmenter=segmenter)
    once["load model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    finding = analyzer.analyze(ct, point, space="ras")
    once["first click (warm-up)"] = time.perf_counter() - t0
    rss_after_load = peak_rss_mib()
    if finding.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    stages: dict[str, list[float]] = {}
    walls, cpus = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        finding = analyzer.analyze(ct, point, space="ras")
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        for name, seconds in finding.timings_s.items():
            stages.setdefault(name, []).append(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_findings([finding], ct, Path(tmp) / "out", title="benchmark", source=args.patient)
        once["write report folder (1 nodule)"] = time.perf_counter() - t0

    rows = [(name, statistics.median(v), min(v), max(v)) for name, v in stages.items()]
    rows.append(("**click to Finding (wall)**", statistics.median(walls), min(walls), max(walls)))
    rows.append(("click to Finding (process CPU time, all threads)", statistics.median(cpus), min(cpus), max(cpus)))
    gpu_peak = (f"{torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB" if finding.device == "cuda" else "n/a")
    device_name = torch.cuda.get_device_name(0) if finding.device == "cuda" else _cpu_name()
    verdict = "meets" if statistics.median(walls) <= TARGET_S else "misses"
    if not (args.cpus == 2 and finding.device == "cpu"):
        verdict += " (but this run is not the 2-core CPU setting)"
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(__file__).relative_to(REPO)),
                                                              *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"## {args.patient}, device {finding.device} ({device_name}), {dt.date.today().isoformat()}", "",
        f"Command: `{command}`", "",
        f"CT {'x'.join(map(str, ct.GetSize()))} voxels, spacing "
        f"{', '.join(f'{s:.3g}' for s in ct.GetSpacing())} mm; point = nodule centroid RAS {point}; "
        f"model {finding.model_name} {finding.model_version}; {pinning}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; {args.repeats} timed clicks after one warm-up; load average at the end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}.", "",
        *([args.note, ""] if args.note else []),
        "| stage | median s | min s | max s |", "|---|---|---|---|",
        *(f"| {n} | {m:.3f} | {lo:.3f} | {hi:.3f} |" for n, m, lo, hi in rows), "",
        "| once | s |", "|---|---|", *(f"| {n} | {v:.2f} |" for n, v in once.items()), "",
        f"Peak resident memory: {peak_rss_mib():.0f} MiB (after model load and first click: {rss_after_load:.0f} "
        f"MiB); peak GPU allocation: {gpu_peak}.", "",
        f"Target: at most {TARGET_S:.0f} s from point to Finding on 2 CPU cores: median "
        f"{statistics.median(walls):.2f} s: {verdict}.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.append and args.out.exists():
        args.out.write_text(args.out.read_text() + "\n" + section)
    else:
        args.out.write_text("# analyze timing\n\nRecorded by `benchmarks/analyze_timing/analyze_timing.py`; see its docstring.\n\n"
                            + section)
    write_stamp(args.out, [ct_dir / "nodules.json"])
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


if __name__ == "__main__":
    sys.exit(main())
