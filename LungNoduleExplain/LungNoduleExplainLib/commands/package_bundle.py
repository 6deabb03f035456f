"""`lungnodule-explain package-bundle`: a finished training run -> a bundle folder with its model card."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "package-bundle", help="package a finished run (+ an nnU-Net model) as a bundle with its MODEL_CARD.md",
        description="Copies RUN's classifier (RUN/bundle, or RUN itself when it is a bundle) into a new bundle with "
                    "the nnU-Net model folder, carries its calibration.json and map_scale.json, re-computes every "
                    "checksum and writes MODEL_CARD.md from the run's metrics. To replace the shipped default, "
                    "package into a new folder and move it to LungNoduleExplainLib/models/default.")
    p.add_argument("--run", type=Path, required=True, help="a `train` output folder or a bundle folder")
    p.add_argument("--out", type=Path, required=True,
                   help="the new bundle folder (refused when not empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a folder lungnodule-explain wrote")
    p.add_argument("--segmentation", type=Path, default=None,
                   help="nnU-Net model folder (plans.json, dataset.json, fold_k/checkpoint_final.pth)")
    p.add_argument("--evaluation", type=Path, default=None, help="an `evaluate` output folder to quote")
    p.add_argument("--recipe", type=Path, default=None,
                   help="for a run without validation patients (train --val-fraction 0): a held-out run of the "
                        "same recipe whose validation figures the card quotes")
    p.add_argument("--recipe-differs", default="",
                   help="where --recipe is the nearest held-out run rather than the same recipe: how it differs")
    p.add_argument("--bundle-version", default="1", help="the bundle's version (default 1)")
    p.add_argument("--note", default="", help="a line for the card's provenance (e.g. where RUN came from)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model_card import PackageRequest, package_bundle

    request = PackageRequest(run=args.run, out=args.out, segmentation=args.segmentation, evaluation=args.evaluation,
                             recipe=args.recipe, recipe_differs=args.recipe_differs, version=args.bundle_version,
                             note=args.note, command=command_line(args))
    folder = package_bundle(request, overwrite=args.overwrite)
    print(f"bundle {folder}, card {folder / 'MODEL_CARD.md'}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as the card records it: the options given, --note left out (the card quotes it apart)."""
    words = ["lungnodule-explain", "package-bundle"]
    for option in ("run", "segmentation", "evaluation", "recipe", "recipe_differs", "bundle_version", "out"):
        value = getattr(args, option)
        if value not in (None, "") and not (option == "bundle_version" and value == "1"):
            words += ["--" + option.replace("_", "-"), str(value)]
    return shlex.join(words + (["--overwrite"] if args.overwrite else []))
