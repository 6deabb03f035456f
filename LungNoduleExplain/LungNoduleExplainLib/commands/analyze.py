"""`lungnodule-explain analyze CT --point X,Y,Z --out DIR`: segment, classify and explain clicked nodules.

Reads the CT (DICOM series folder, NIfTI, NRRD, MHA), checks every point against it, loads the model once, analyses
each point with a progress bar and writes the report folder (see `reports`). Bad input stops the run before
anything is written to --out, with one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..points import ClickedPoint, analyze_points
from ..errors import PointError
from ..explain import MAP_METHODS
from ..finding import Finding
from ..nodule_check import NoNodule
from ..vocabulary import PointSpace
from . import dicom_options
from .device_option import add_device_argument

logger = logging.getLogger(__name__)

AnalyzerFactory = Callable[..., Any]  # (bundle=, device=, progress=) -> object with analyze(ct, point, space)
DEFAULT_SPACE = PointSpace.RAS  # Slicer's


def parse_point(text: str) -> tuple[float, float, float]:
    """argparse type of --point: 'X,Y,Z' (three finite numbers)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"--point must be three comma-separated numbers such as -56.4,-86.3,-116.0; got {text!r}")
    return values  # type: ignore[return-value]


def existing_file(text: str) -> Path:
    """argparse type of --points-csv: a file that exists."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"points file not found: {text}")
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="analyse the nodules at given points of a CT and write a report",
        description="Segment the nodule at each point, predict malignancy and its manifestations, and write "
                    "finding.json, the segmentation and one activation map per output (NRRD on the CT grid), "
                    "PNG overlays and a self-contained report.html. Research use only, not for clinical "
                    "decisions.")
    parser.add_argument("ct", type=Path, nargs="?",
                        help="the CT: a DICOM series folder, or a NIfTI/NRRD/MHA file (or --dicomweb)")
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y,Z",
                        help="a point on the nodule (repeat for several nodules); RAS mm unless --lps or --ijk")
    space = parser.add_mutually_exclusive_group()
    for kind in PointSpace:
        default = " (default)" if kind == DEFAULT_SPACE else ""
        space.add_argument(f"--{kind}", dest="space", action="store_const", const=kind.value,
                           help=f"points in {kind.meaning}{default}")
    parser.add_argument("--points-csv", type=existing_file, metavar="FILE",
                        help=f"CSV with columns x,y,z and optionally space ({PointSpace.listed()}) per row")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--model", type=Path, default=None, metavar="BUNDLE",
                        help="model bundle folder (default: the model shipped with the package)")
    add_device_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--classify-anyway", action="store_true",
                        help="classify a point where no nodule is found (research: the finding, report and "
                             "Slicer table carry the warning); by default such a point is refused, and with "
                             "several points it is reported as 'no nodule found' while the others go on")
    parser.add_argument("--map-method", choices=MAP_METHODS, default=MAP_METHODS[0],
                        help="what the maps show: contribution (default: the SAM head's evidence with its spatial "
                             "weights), sam (the paper's map) or occlusion (slower); benchmarks/map_quality")
    dicom_options.add_arguments(parser)
    parser.set_defaults(func=run, space=DEFAULT_SPACE.value)
    # RAS points are often negative: let "--point -56.4,-86.3,-116" be a value, not an unknown option. argparse
    # only knows plain negative numbers ("-5", "-.5") by this (private, stable since Python 3.2) matcher.
    parser._negative_number_matcher = re.compile(r"^-\d*\.?\d+([eE][-+]?\d+)?(,\s*[-+]?[\d.eE+-]+)*$")


def run(args: argparse.Namespace, *, analyzer_factory: AnalyzerFactory | None = None,
        client_factory: dicom_options.ClientFactory | None = None) -> int:
    """The verb. `analyzer_factory` (tests) replaces analysis.Analyzer, `client_factory` the DICOMweb client."""
    from ..reports import check_out_dir, write_findings
    from ..study import read_study_info

    dicom_options.check_arguments(args)
    points = gather_points(args.point, args.points_csv, args.space)
    check_out_dir(args.out.absolute(), args.overwrite)  # fail before minutes of work, not after
    with dicom_options.ct_source(args, client_factory) as (ct_path, client):
        check_out_keeps_ct(args.out, ct_path)
        ct, series = dicom_options.read_input(args, ct_path)
        check_points(ct, points)
        findings = load_and_analyze(ct, points, bundle=args.model, device=args.device,
                                  analyzer_factory=analyzer_factory, quiet=getattr(args, "quiet", False),
                                  classify_anyway=getattr(args, "classify_anyway", False),
                                  map_method=getattr(args, "map_method", MAP_METHODS[0]))
        dicom = dicom_options.build(args, findings, ct, series)
        logger.info("writing segmentation, maps, overlays and report to %s", args.out)
        # patient, date and series of the DICOM header; else the file name
        study = read_study_info(ct_path, file=series.files[0] if series else None)
        source = str(ct_path)
        if client is not None:  # not the temporary folder's name
            source = f"{args.dicomweb} series {args.series_uid}"
            study = dataclasses.replace(study, name=f"series {args.series_uid}")
        report = write_findings(findings, ct, args.out, title=f"Lung nodule analysis: {study.title()}",
                                source=source, overwrite=args.overwrite, study=study,
                                extra_writer=dicom_options.writer(dicom))
        print_summary(findings, report)
        dicom_options.store(args, client, dicom)
    return 0


def check_out_keeps_ct(out: Path, ct: Path) -> None:
    """--out is replaced as a whole (--overwrite): refuse a folder that holds the input CT."""
    from ..reports import OutputExistsError
    out_dir, ct_path = out.resolve(), ct.resolve()
    if ct_path == out_dir or out_dir in ct_path.parents:
        raise OutputExistsError(f"output folder {out} holds the CT {ct}, which writing the report would delete; "
                                "choose another --out folder")


def gather_points(flag_points: Sequence[tuple[float, float, float]], csv_path: Path | None,
                  space: str) -> list[ClickedPoint]:
    """The --point values (in `space`) followed by the rows of --points-csv; at least one point."""
    points = [ClickedPoint(tuple(p), space, f"--point {n}") for n, p in enumerate(flag_points, start=1)]
    if csv_path is not None:
        points.extend(read_points_csv(csv_path, default_space=space))
    if not points:
        raise PointError("no point given: pass --point X,Y,Z or --points-csv FILE")
    return points


def read_points_csv(path: Path, default_space: str = DEFAULT_SPACE) -> list[ClickedPoint]:
    """Rows of a CSV with header x,y,z[,space] (case-insensitive; other columns ignored). Raises PointError."""
    try:
        return _read_points_rows(path, default_space)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PointError(f"points file {path}: cannot be read as a UTF-8 CSV ({exc}); save it as CSV UTF-8 "
                         "with a header x,y,z[,space]") from None


def _read_points_rows(path: Path, default_space: str) -> list[ClickedPoint]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        missing = [c for c in ("x", "y", "z") if c not in header]
        if missing:
            raise PointError(f"points file {path}: missing column(s) {', '.join(missing)}; expected a header "
                             f"with x,y,z and optionally space; found {list(header) or 'no header'}")
        points = []
        for row in reader:
            line = reader.line_num
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            try:
                xyz = tuple(float(row[header[c]]) for c in ("x", "y", "z"))
            except (TypeError, ValueError):
                raise PointError(f"points file {path} line {line}: x, y, z must be numbers, got "
                                 f"{[row[header[c]] for c in ('x', 'y', 'z')]}") from None
            if not all(math.isfinite(v) for v in xyz):
                raise PointError(f"points file {path} line {line}: coordinates {xyz} are not finite")
            space = (row.get(header.get("space", ""), "") or "").strip().lower() or default_space
            if space not in PointSpace.names():
                raise PointError(f"points file {path} line {line}: space {space!r} is not one of "
                                 f"{PointSpace.names()}")
            points.append(ClickedPoint(xyz, space, f"{path.name} line {line}"))
    if not points:
        raise PointError(f"points file {path} has a header but no points")
    return points


def check_points(ct: Any, points: Sequence[ClickedPoint]) -> None:
    """Every point inside the CT and near tissue, before the model loads; the PointError names the point."""
    from ..analysis import check_tissue_near
    from ..volume import point_to_lps

    for point in points:
        try:
            check_tissue_near(ct, point_to_lps(point.coordinates, point.space, ct))
        except PointError as exc:
            raise PointError(f"{point.origin}: {exc}") from exc


def load_and_analyze(ct: Any, points: Sequence[ClickedPoint], *, bundle: Path | None, device: str,
                     analyzer_factory: AnalyzerFactory | None = None, quiet: bool = False,
                     classify_anyway: bool = False, map_method: str = MAP_METHODS[0]) -> list[Finding | NoNodule]:
    """Load the model once and analyse every point (points.analyze_points) with a tqdm bar on stderr."""
    from tqdm import tqdm

    if analyzer_factory is None:
        from ..analysis import Analyzer
        analyzer_factory = Analyzer
    bar = tqdm(total=len(points), unit="nodule", disable=quiet, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} nodules [{elapsed}<{remaining}]")

    def on_progress(fraction: float, message: str) -> None:
        bar.n = len(points) * fraction
        bar.set_description_str(message[:40], refresh=False)
        bar.refresh()

    try:
        bar.set_description_str("loading the model")
        extra = {} if map_method == MAP_METHODS[0] else {"map_method": map_method}  # test factories take none
        analyzer = analyzer_factory(bundle=bundle, device=device, progress=None, **extra)
        return analyze_points(analyzer, ct, points, classify_anyway=classify_anyway, progress=on_progress)
    finally:
        bar.close()


def print_summary(findings: Sequence[Finding | NoNodule], report: Path) -> None:
    """One line per nodule on stdout, then where the report is."""
    for index, finding in enumerate(findings, start=1):
        if isinstance(finding, NoNodule):
            print(f"nodule-{index:02d}: no nodule found: {finding.check.reason}")
            continue
        diagnosis = finding.diagnosis
        positives = [o.name for o in finding.outputs if o.kind == "manifestation" and o.positive]
        probability, threshold = diagnosis.shown
        if finding.nodule_check is not None and not finding.nodule_check.found:
            print(f"nodule-{index:02d}: NO NODULE FOUND ({finding.nodule_check.reason}); classified anyway:")
        spread = f"; {diagnosis.spread_text}" if diagnosis.has_spread else ""
        print(f"nodule-{index:02d}: {diagnosis.name} {probability} "
              f"({diagnosis.verdict} at {threshold}{spread}), "
              f"axial {finding.axial.long_mm:.1f} x {finding.axial.short_mm:.1f} mm (long x short axis), "
              f"equivalent diameter {finding.diameter_mm:.1f} mm, volume {finding.volume_mm3:.0f} mm3; "
              f"manifestations present: {', '.join(positives) or 'none'}")
    print("Research use only, not for clinical decisions.")
    print(f"report: {report}")
