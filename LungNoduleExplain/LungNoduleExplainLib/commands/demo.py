"""`lungnodule-explain demo [--out DIR]`: the whole pipeline on a synthetic chest CT, with no download.

Makes the engine's phantom (a chest CT with one solid nodule), saves it as `phantom_ct.nrrd`, analyses it at the
nodule centre with the default model and writes the report, which states that the image is a phantom, not a
patient. Running it again replaces its own previous output folder (recognised by its findings.json), never
another folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from ..finding import Finding
from ..metrics import dice as segmentation_dice
from ..worker import DEVICES
from .analyze import AnalyzerFactory, ClickedPoint, analyze_points

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("lungnodule-demo")
TRUTH_DICE_WARNING = 0.7  # below this the mask is visibly wrong (the LIDC out-of-fold mean is 0.83)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on a built-in synthetic chest CT and write a report",
        description="Generate a synthetic chest CT with one nodule (a phantom, not a patient), analyse it with "
                    "the default model, and write the same report folder as `analyze`, plus phantom_ct.nrrd.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"output folder (default ./{DEFAULT_OUT}; a previous demo output there is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed (default 0)")
    parser.add_argument("--diameter", type=phantom_diameter, default=14.0, metavar="MM",
                        help="nodule diameter in mm, 3 to 40 (default 14)")
    parser.add_argument("--model", type=Path, default=None, metavar="BUNDLE",
                        help="model bundle folder (default: the model shipped with the package)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the networks run (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.set_defaults(func=run)


def phantom_diameter(text: str) -> float:
    """argparse type of --diameter: the phantom supports 3-40 mm (a ValueError later would be a traceback)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 3.0 <= value <= 40.0:
        raise argparse.ArgumentTypeError(f"--diameter must be a number of mm from 3 to 40; got {text!r}")
    return value


def run(args: argparse.Namespace, *, analyzer_factory: AnalyzerFactory | None = None) -> int:
    """The verb. `analyzer_factory` (tests) replaces analysis.Analyzer."""
    from ..phantom import make_phantom_ct
    from ..reports import check_out_dir, write_findings

    overwrite = args.overwrite or is_previous_demo(args.out)
    check_out_dir(args.out.absolute(), overwrite)
    phantom = make_phantom_ct(seed=args.seed, diameter_mm=args.diameter)
    point = ClickedPoint(phantom.nodule_center_lps, "lps", "phantom nodule centre")
    # classify_anyway: the demo shows the whole pipeline even where nnU-Net misreads the synthetic nodule; the
    # nodule check's verdict then stands as a warning in the report (with the Dice check below)
    findings = analyze_points(phantom.ct, [point], bundle=args.model, device=args.device,
                              analyzer_factory=analyzer_factory, quiet=getattr(args, "quiet", False),
                              classify_anyway=True)
    dice = check_against_truth(findings[0], phantom.nodule_mask)
    report = write_findings(findings, phantom.ct, args.out, title="LungNoduleExplain demo on a synthetic phantom",
                            source=f"synthetic phantom (seed {args.seed}), saved as phantom_ct.nrrd",
                            is_phantom=True, overwrite=overwrite, extra_images={"phantom_ct.nrrd": phantom.ct})
    print(summary_paragraph(findings[0], args.diameter, phantom.ct.GetSize(), dice))
    print(f"report: {report}")
    return 0


def check_against_truth(finding: Finding, truth: sitk.Image) -> float:
    """Dice of the segmentation against the phantom's own nodule (known here, unlike on a patient); a poor overlap
    becomes a warning in the report, since every output rests on that mask."""
    dice = segmentation_dice(finding.segmentation, truth)
    if dice < TRUTH_DICE_WARNING:
        finding.warnings.append(
            f"The segmentation overlaps the phantom's true nodule with Dice {dice:.2f} only: the nnU-Net model, "
            "trained on real LIDC nodules, misreads this synthetic one, and every output here rests on that mask. "
            "Try another --seed; on real CT see docs/RESULTS.md for how the segmentation performs.")
    return dice


def is_previous_demo(out: Path) -> bool:
    """True when `out` holds a report this command wrote (findings.json with is_phantom true)."""
    index = out / "findings.json"
    try:
        return bool(json.loads(index.read_text(encoding="utf-8")).get("is_phantom"))
    except (OSError, ValueError, AttributeError):
        return False


def summary_paragraph(finding: Finding, diameter_mm: float, size: Sequence[int], dice: float | None = None) -> str:
    """A plain-language paragraph: what was made, what the model says, and that a phantom is not a patient."""
    diagnosis = finding.diagnosis
    manifestations = ", ".join(f"{o.name} {o.shown[0]} ({o.verdict}, "
                               f"threshold {o.shown[1]})" for o in finding.outputs if o.kind == "manifestation")
    total_s = finding.timings_s.get("total", sum(finding.timings_s.values()))
    checked = "" if dice is None else f"; Dice {dice:.2f} against the true nodule"
    missed = (" The segmentation missed much of the phantom's nodule (see the report's warning)."
              if dice is not None and dice < TRUTH_DICE_WARNING else "")
    return (f"The demo made a synthetic chest CT ({' x '.join(str(n) for n in size)} voxels) with a "
            f"{diameter_mm:.0f} mm solid nodule and clicked its centre. {finding.model_name} "
            f"{finding.model_version} on {finding.device.upper()} segmented a nodule of {finding.diameter_mm:.1f} mm "
            f"({finding.volume_mm3:.0f} mm3{checked}) and gives {diagnosis.name} {diagnosis.shown[0]} "
            f"({diagnosis.verdict} at threshold {diagnosis.shown[1]}"
            f"{'; ' + diagnosis.spread_text if diagnosis.has_spread else ''})"
            f"{'; manifestations: ' + manifestations if manifestations else ''}, in {total_s:.1f} s.{missed} "
            "The image is a phantom, not a patient: these numbers only show that the pipeline runs. "
            "Research use only, not for clinical decisions.")
