"""`lungnodule-explain train`: train the explainable classifier on a dataset folder and write a model bundle."""

from __future__ import annotations

import argparse
import logging

from ..network_config import (DEFAULT_DESCRIPTOR_SET, DEFAULT_FEATURES, DEFAULT_VARIANT, PRIOR_VARIANTS, VARIANTS,
                              NetworkConfig)
from ..tasks import BUILTIN_TASK_SETS
from ..train_config import RunSpec, TrainConfig, default
from ..vocabulary import Prior
from .device_option import add_device_argument

logger = logging.getLogger(__name__)


def features_arg(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--features must be 4 comma-separated integers, got {text!r}") from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--features must be 4 positive comma-separated integers, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train the classifier on a dataset folder (nodules.csv + images/ + masks/)",
        description="Two-phase cascade training (manifestations first, then all outputs with task weights "
                    "1/AUC), validation split by patient, checkpoint every epoch; writes RUN_DIR/bundle. "
                    "Runs under torchrun too (DistributedDataParallel: NCCL on GPUs, gloo on CPUs).")
    p.add_argument("--data", required=True, help="dataset folder in the lidc-voi format")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, curves, bundle/)")
    p.add_argument("--tasks", default=default("tasks", RunSpec),
                   help=f"task set: a built-in ({', '.join(BUILTIN_TASK_SETS)}) or a JSON file "
                        f"(default {default('tasks', RunSpec)})")
    p.add_argument("--variant", default=DEFAULT_VARIANT, choices=list(VARIANTS),
                   help="network: " + "; ".join(f"{k}: {v.description}" for k, v in VARIANTS.items()))
    p.add_argument("--features", type=features_arg, default=DEFAULT_FEATURES,
                   help=f"encoder widths (default {','.join(map(str, DEFAULT_FEATURES))}; the authors: 64,128,256,512)")
    p.add_argument("--stem-stride", type=int, choices=(1, 2), default=2,
                   help="1: full-resolution stem as the authors; 2 (default): 8x cheaper, for CPUs")
    p.add_argument("--inputs", default="percentile-voi",
                   type=lambda text: tuple(v.strip() for v in text.split(",") if v.strip()),
                   help="image channels: 'percentile-voi' (default, METHOD.md: the VOI's [0.5, 99.5] percentiles, "
                        "min-max, then padding with air), 'percentile' (bundles up to v10: the padded patch's "
                        "percentiles), 'hu-window' (fixed -1000..1000 HU), e.g. percentile-voi,hu-window")
    p.add_argument("--descriptors", action=argparse.BooleanOptionalAction, default=True,
                   help="feed each head the nodule descriptors (shape and HU of the prior region, see "
                        "descriptors.py) beside its SAM term (default on; --no-descriptors gives the authors' "
                        "network). Only for variants with a prior")
    p.add_argument("--descriptor-set", default=DEFAULT_DESCRIPTOR_SET,
                   help="which descriptors (descriptors.DESCRIPTOR_SETS): shape-density (default: volume, diameter, "
                        "shape ratios, HU percentiles inside and around the region) or shape-density-outline "
                        "(adds the outline's solidity and radial variation)")
    p.add_argument("--prior", default=default("prior", RunSpec),
                   help=f"AAG prior: '{Prior.REFERENCE_MASK}' or a folder of out-of-fold probability maps "
                        "<case_id>.nii.gz")
    # defaults: TrainConfig's (train_config.py), the one source
    p.add_argument("--epochs", type=int, default=default("max_epochs"),
                   help=f"maximum epochs (default {default('max_epochs')})")
    p.add_argument("--phase1-epochs", type=int, default=default("phase1_epochs"),
                   help=f"epochs of phase 1 (default {default('phase1_epochs')})")
    p.add_argument("--batch-size", type=int, default=default("batch_size"))
    p.add_argument("--lr", type=float, default=default("lr"))
    p.add_argument("--plateau-patience", type=int, default=default("plateau_patience"))
    p.add_argument("--early-stop-patience", type=int, default=default("early_stop_patience"))
    p.add_argument("--val-fraction", type=float, default=default("val_fraction", RunSpec),
                   help="share of PATIENTS held out for validation; 0 (with --members >= 2): none, every patient "
                        "trains members and the figures are their pooled out-of-fold predictions")
    p.add_argument("--members", type=int, default=default("members", RunSpec),
                   help="train an ensemble of this many networks (default 1: one network), member k on all "
                        "training patients but patient fold k, where it picks its epoch; thresholds from their "
                        "out-of-fold predictions; the validation patients only measure the ensemble")
    p.add_argument("--seed", type=int, default=default("seed"))
    add_device_argument(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--name", default=default("name", RunSpec), help="model name recorded in the bundle")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it holds an earlier run (never a folder this program did not write)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import init_from_env
    from ..runs import RunSpec, train_run

    init_from_env(args.device)  # under torchrun: one process per GPU (NCCL) or CPU worker (gloo)

    network = NetworkConfig(args.variant, args.features, stem_stride=args.stem_stride, inputs=args.inputs,
                            descriptors=args.descriptors and args.variant in PRIOR_VARIANTS,
                            descriptor_set=args.descriptor_set)
    config = TrainConfig(network=network,
                         max_epochs=args.epochs, phase1_epochs=args.phase1_epochs, batch_size=args.batch_size,
                         lr=args.lr, plateau_patience=args.plateau_patience,
                         early_stop_patience=args.early_stop_patience, seed=args.seed, threads=args.threads)
    spec = RunSpec(args.data, args.out, args.tasks, args.prior, args.val_fraction, args.device, args.name,
                   args.members)
    # Progress also goes to the log (with the fraction attached) so the Slicer CLI module can show it.
    bundle = train_run(spec, config, resume=args.resume, overwrite=args.overwrite, show_progress_bar=not args.quiet,
                       progress=lambda fraction, message: logger.info(message, extra={"progress": fraction}))
    from ..distributed import is_main_process
    if is_main_process():
        print(f"model bundle written to {bundle}")
    return 0
