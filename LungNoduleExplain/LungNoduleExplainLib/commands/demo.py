"""`lungnodule-explain demo [--out DIR] [--phantom]`: the whole pipeline on a built-in CT, with no download.

By default it analyses the real CT shipped inside the package (LIDC-IDRI-0001 cropped around its nodule, CC BY 3.0;
see `sample`), clicked at the readers' centroid, and checks the segmentation against the LIDC readers' mask.
`--phantom` analyses the engine's synthetic chest CT instead (for tests; the report says it is not a patient).
Running it again replaces its own previous output folder (recognised by its findings.json), never another folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..errors import ConfigError
from ..finding import Finding
from ..metrics import dice as segmentation_dice
from ..points import ClickedPoint
from ..vocabulary import PointSpace
from .analyze import AnalyzerFactory, load_and_analyze
from .device_option import add_device_argument

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("lungnodule-demo")
TRUTH_DICE_WARNING = 0.7  # below this the mask is visibly wrong (the LIDC out-of-fold mean is 0.83)
PHANTOM_SEED, PHANTOM_DIAMETER_MM = 0, 14.0


@dataclass
class DemoCase:
    """What the demo analyses: the CT, the point, the known nodule and how the report names them."""

    ct: sitk.Image
    point: ClickedPoint
    truth: sitk.Image
    truth_name: str  # "the LIDC readers' mask"
    title: str
    source: str
    described: str  # the summary's first sentence
    is_phantom: bool
    extra_images: dict[str, sitk.Image] = field(default_factory=dict)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on a built-in real CT (LIDC-IDRI-0001) and write a report",
        description="Analyse the real chest CT shipped with the package (LIDC-IDRI-0001 around its nodule, "
                    "CC BY 3.0) at its readers' nodule centroid with the default model, check the segmentation "
                    "against the readers' mask, and write the same report folder as `analyze`. --phantom uses a "
                    "synthetic CT instead.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"output folder (default ./{DEFAULT_OUT}; a previous demo output there is replaced)")
    parser.add_argument("--phantom", action="store_true",
                        help="analyse a synthetic chest CT (a phantom, not a patient) instead of the real one")
    parser.add_argument("--seed", type=int, default=None, help=f"with --phantom: its random seed ({PHANTOM_SEED})")
    parser.add_argument("--diameter", type=phantom_diameter, default=None, metavar="MM",
                        help=f"with --phantom: nodule diameter in mm, 3 to 40 ({PHANTOM_DIAMETER_MM:.0f})")
    parser.add_argument("--model", type=Path, default=None, metavar="BUNDLE",
                        help="model bundle folder (default: the model shipped with the package)")
    add_device_argument(parser)
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
    from ..reports import check_out_dir, write_findings

    if not args.phantom and (args.seed is not None or args.diameter is not None):
        raise ConfigError("--seed and --diameter shape the synthetic phantom; add --phantom to use them")
    overwrite = args.overwrite or is_previous_demo(args.out)
    check_out_dir(args.out.absolute(), overwrite)
    case = phantom_case(args.seed, args.diameter) if args.phantom else real_case()
    # classify_anyway: the demo always shows the whole pipeline; a refusal by the nodule check stands as a warning
    findings = load_and_analyze(case.ct, [case.point], bundle=args.model, device=args.device,
                              analyzer_factory=analyzer_factory, quiet=getattr(args, "quiet", False),
                              classify_anyway=True)
    dice = check_against_truth(findings[0], case)
    report = write_findings(findings, case.ct, args.out, title=case.title, source=case.source,
                            is_phantom=case.is_phantom, overwrite=overwrite, extra_images=case.extra_images)
    print(summary_paragraph(findings[0], case, dice))
    print(f"report: {report}")
    return 0


def real_case() -> DemoCase:
    from ..sample import CITATION, load_sample

    sample = load_sample()
    size = " x ".join(str(n) for n in sample.ct.GetSize())
    return DemoCase(
        ct=sample.ct, point=ClickedPoint(sample.point_lps, PointSpace.LPS, "the readers' nodule centroid"),
        truth=sample.readers_mask, truth_name="the LIDC readers' mask",
        title=f"LungNoduleExplain demo on {sample.info['patient_id']} (LIDC-IDRI)",
        source=f"{sample.info['description']}; {CITATION}", is_phantom=False,
        described=(f"The demo analysed a real chest CT from the public LIDC-IDRI collection "
                   f"({sample.info['patient_id']}, {size} voxels around its nodule, which "
                   f"{sample.info['n_readers']} radiologists outlined: {sample.info['readers_diameter_mm']:.0f} mm "
                   "across) and clicked the readers' centroid."))


def phantom_case(seed: int | None, diameter_mm: float | None) -> DemoCase:
    from ..phantom import make_phantom_ct

    seed = PHANTOM_SEED if seed is None else seed
    diameter_mm = PHANTOM_DIAMETER_MM if diameter_mm is None else diameter_mm
    phantom = make_phantom_ct(seed=seed, diameter_mm=diameter_mm)
    size = " x ".join(str(n) for n in phantom.ct.GetSize())
    return DemoCase(
        ct=phantom.ct, point=ClickedPoint(phantom.nodule_center_lps, PointSpace.LPS, "phantom nodule centre"),
        truth=phantom.nodule_mask, truth_name="the phantom's true nodule",
        title="LungNoduleExplain demo on a synthetic phantom",
        source=f"synthetic phantom (seed {seed}), saved as phantom_ct.nrrd", is_phantom=True,
        extra_images={"phantom_ct.nrrd": phantom.ct},
        described=(f"The demo made a synthetic chest CT ({size} voxels) with a {diameter_mm:.0f} mm solid nodule "
                   "and clicked its centre."))


def check_against_truth(finding: Finding, case: DemoCase) -> float:
    """Dice of the segmentation against the case's known nodule; a poor overlap becomes a warning in the report,
    since every output rests on that mask."""
    dice = segmentation_dice(finding.segmentation, case.truth)
    if dice < TRUTH_DICE_WARNING:
        finding.warnings.append(
            f"The segmentation overlaps {case.truth_name} with Dice {dice:.2f} only (the model's out-of-fold mean "
            "on LIDC nodules is 0.83): every output here rests on that mask."
            + (" The nnU-Net model, trained on real LIDC nodules, misreads this synthetic one; try another --seed."
               if case.is_phantom else ""))
    return dice


def is_previous_demo(out: Path) -> bool:
    """True when `out` holds a report this command wrote (ours, and findings.json's title is a demo's)."""
    from ..output_folder import is_ours

    index = out / "findings.json"
    if not is_ours(out):
        return False
    try:
        return str(json.loads(index.read_text(encoding="utf-8")).get("title", "")).startswith(
            "LungNoduleExplain demo on ")
    except (OSError, ValueError, AttributeError):
        return False


def summary_paragraph(finding: Finding, case: DemoCase, dice: float | None = None) -> str:
    """A plain-language paragraph: what was analysed, what the model says, and what the numbers are for."""
    diagnosis = finding.diagnosis
    manifestations = ", ".join(f"{o.name} {o.shown[0]} ({o.verdict}, "
                               f"threshold {o.shown[1]})" for o in finding.outputs if o.kind == "manifestation")
    total_s = finding.timings_s.get("total", sum(finding.timings_s.values()))
    checked = "" if dice is None else f"; Dice {dice:.2f} against {case.truth_name}"
    missed = (f" The segmentation missed much of {case.truth_name} (see the report's warning)."
              if dice is not None and dice < TRUTH_DICE_WARNING else "")
    caveat = ("The image is a phantom, not a patient: these numbers only show that the pipeline runs. "
              if case.is_phantom else
              "The LIDC readers rated this nodule highly suspicious; one case shows how the tool reads, not how "
              "well (docs/RESULTS.md has figures on patients the model never saw). ")
    return (f"{case.described} {finding.model_name} {finding.model_version} on {finding.device.upper()} "
            f"segmented a nodule of {finding.axial.long_mm:.1f} x {finding.axial.short_mm:.1f} mm (axial long x short "
            f"axis; {finding.volume_mm3:.0f} mm3{checked}) and gives "
            f"{diagnosis.name} {diagnosis.shown[0]} ({diagnosis.verdict} at threshold {diagnosis.shown[1]}"
            f"{'; ' + diagnosis.spread_text if diagnosis.has_spread else ''})"
            f"{'; manifestations: ' + manifestations if manifestations else ''}, in {total_s:.1f} s.{missed} "
            f"{caveat}Research use only, not for clinical decisions.")
