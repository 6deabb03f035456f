"""`lungnodule-explain prepare`: a hospital's own cases CSV + task configuration -> a `lidc-voi` dataset folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .prepare_lidc import context_mm_arg, tqdm_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare", help="build a training dataset from your own cases (CSV + task configuration)",
        description="Read a cases CSV (case_id, patient_id, ct, mask or point_x/y/z_mm + point_space, "
                    "diameter_mm, and the label columns your task configuration names), crop each CT with "
                    "context around the nodule, and write a lidc-voi folder (nodules.csv, images/, masks/, "
                    "tasks.json) plus the nnU-Net raw dataset when every case has a mask. Bad rows are "
                    "reported and skipped. Resumable. See docs/DATA.md and examples/.")
    parser.add_argument("--cases", type=Path, required=True, help="the cases CSV")
    parser.add_argument("--tasks", required=True,
                        help="task configuration JSON (TaskSet format) or a built-in name (lidc, inhouse-example)")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder (created; reused when resuming)")
    parser.add_argument("--context-mm", type=context_mm_arg, default=30.0,
                        help="CT kept around each nodule on every side, in mm (default 30)")
    parser.add_argument("--no-nnunet", action="store_true", help="do not write the nnU-Net raw dataset")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.own_cases import prepare_own  # noqa: PLC0415
    from ..tasks import load_task_set  # noqa: PLC0415

    task_set = load_task_set(args.tasks)
    progress, close = tqdm_progress("preparing cases", unit="CT", quiet=args.quiet)
    try:
        summary = prepare_own(args.cases, task_set, args.out, context_mm=args.context_mm,
                              export_nnunet=not args.no_nnunet, progress=progress)
    finally:
        close()
    print(json.dumps(summary.to_dict(), indent=1) if args.json else summary.format())
    return 0 if summary.cases_total else 1  # nothing usable: say so in the exit status too
