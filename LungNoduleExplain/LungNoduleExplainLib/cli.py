"""`lungnodule-explain <verb>`: one console command; each verb lives in `commands/<verb>.py`.

A verb module defines `register(subparsers) -> None`, which adds its parser and sets `func=run`, and
`run(args) -> int`. Imports are lazy so `--help` stays fast and a verb's heavy dependencies load only when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import LungNoduleExplainError

# Order is the order shown in --help.
VERB_MODULES = (
    "demo",
    "analyze",
    "train",
    "evaluate",
    "calibrate",
    "package_bundle",
    "train_segmentation",
    "prepare_lidc",
    "prepare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungnodule-explain",
        description="Explainable lung nodule diagnosis: segment a nodule, predict malignancy and its "
                    "manifestations, and show where each comes from. Research use only, not for clinical decisions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="only warnings and errors")
    verbosity.add_argument("--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LungNoduleExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
