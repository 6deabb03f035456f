"""nnU-Net v2 planning and preprocessing with a small plans variant for nodule crops.

nnU-Net's own `ExperimentPlanner` decides spacing, normalisation and the U-Net topology; the subclass here only
caps the 3D patch size (default 32 x 48 x 48 voxels, z y x: about 40 x 34 x 34 mm at 1.25 x 0.7 x 0.7 mm),
uses a quarter of the features per stage (8 .. 64 instead of 32 .. 320) and fixes the batch size (2), so one crop
predicts in well under a second on CPU, a training iteration costs about 0.5 s on 2 CPU cores, and a fold's
weights stay about 0.3 M parameters (well under 1 MiB stored as float16).
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PLANS_NAME = "nnUNetPlansLungNoduleSmall"
CONFIGURATION = "3d_fullres"
DEFAULT_PATCH_ZYX: tuple[int, int, int] = (32, 48, 48)


@dataclass(frozen=True)
class NnUNetFolders:
    """The three folders nnU-Net reads from its environment variables, all under one work folder."""

    raw: Path
    preprocessed: Path
    results: Path


def use_work_folder(work: str | Path, n_proc_augmentation: int = 1) -> NnUNetFolders:
    """Point nnU-Net at `<work>/nnUNet_{raw,preprocessed,results}` and keep it CPU-friendly.

    nnunetv2 2.8 reads these variables lazily (nnunetv2.paths._EnvPath), so setting them at any time works.
    Sets nnUNet_compile=False and nnUNet_n_proc_DA (data augmentation worker processes).
    """
    work = Path(work).resolve()
    folders = NnUNetFolders(work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results")
    for key, path in (("nnUNet_raw", folders.raw), ("nnUNet_preprocessed", folders.preprocessed),
                      ("nnUNet_results", folders.results)):
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    os.environ["nnUNet_compile"] = "False"
    os.environ["nnUNet_n_proc_DA"] = str(int(n_proc_augmentation))
    # nnU-Net's planning and preprocessing open multiprocessing pools. Forked from a process that already runs
    # torch/OpenMP threads (a test session, the Slicer worker), a pool worker can inherit a held lock and hang
    # forever (seen here in Pool.terminate). Spawned workers start clean; nnU-Net supports them (its default on
    # macOS and Windows).
    if multiprocessing.get_start_method(allow_none=True) in (None, "fork"):
        multiprocessing.set_start_method("spawn", force=True)
    return folders


@dataclass(frozen=True)
class SmallPlansConfig:
    """The knobs of the small plans variant. patch_zyx in voxels at nnU-Net's target spacing."""

    patch_zyx: tuple[int, int, int] = DEFAULT_PATCH_ZYX
    base_features: int = 8
    max_features: int = 64
    batch_size: int = 2

    def __post_init__(self) -> None:
        if len(self.patch_zyx) != 3 or any(int(p) < 8 for p in self.patch_zyx):
            raise ValueError(f"patch size must be 3 integers >= 8 (z, y, x voxels), got {tuple(self.patch_zyx)}")
        if self.base_features < 1 or self.max_features < self.base_features or self.batch_size < 1:
            raise ValueError(f"invalid features ({self.base_features}..{self.max_features}) or batch size "
                             f"({self.batch_size})")


def _planner_class():
    # nnunetv2 is imported here, not at module import, so the engine stays light to import.
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    class SmallNodulePlanner(ExperimentPlanner):
        """nnU-Net's default planner with a capped 3D patch, fewer features per stage and a fixed batch size."""

        config = SmallPlansConfig()

        def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                     preprocessor_name: str = "DefaultPreprocessor", plans_name: str = PLANS_NAME,
                     overwrite_target_spacing=None, suppress_transpose: bool = False):
            super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                             overwrite_target_spacing, suppress_transpose)
            self.UNet_base_num_features = self.config.base_features
            self.UNet_max_features_3d = self.config.max_features

        def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                        _cache):
            if len(spacing) != 3:
                return super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                           approximate_n_voxels_dataset, _cache)
            # nnU-Net clips its initial patch to the median shape; clipping it further caps the patch.
            capped = np.minimum(np.asarray(median_shape), np.asarray(self.config.patch_zyx))
            plan = super().get_plans_for_configuration(spacing, capped, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
            plan["median_image_size_in_voxels"] = median_shape
            plan["batch_size"] = int(self.config.batch_size)
            return plan

    return SmallNodulePlanner


def fingerprint_and_preprocess(dataset_id: int, config: SmallPlansConfig = SmallPlansConfig(),
                                num_processes: int = 2, check_integrity: bool = True, verbose: bool = False) -> dict:
    """Fingerprint, plan (small variant) and preprocess `3d_fullres` through nnU-Net's API; returns the plans.

    Expects use_work_folder() to have been called and the raw dataset to exist.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset

    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=check_integrity,
                                clean=True, verbose=verbose, show_progress_bar=False)
    plans = plan(dataset_id, config)
    preprocess_dataset(dataset_id, PLANS_NAME, configurations=(CONFIGURATION,), num_processes=(num_processes,),
                       verbose=verbose, show_progress_bar=False)
    return plans


def plan(dataset_id: int, config: SmallPlansConfig = SmallPlansConfig()) -> dict:
    """Run the small planner on an existing fingerprint; nnU-Net writes
    `<preprocessed>/Dataset.../nnUNetPlansLungNoduleSmall.json`. Spacing and normalisation come from the
    fingerprint alone, so re-planning with other features, patch or batch size reuses the preprocessed data.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    planner = _planner_class()
    planner.config = config
    with contextlib.redirect_stdout(io.StringIO()):  # the planner prints every configuration it considers
        plans, _ = plan_experiment_dataset(dataset_id, planner, overwrite_plans_name=PLANS_NAME)
    cfg = plans["configurations"][CONFIGURATION]
    logger.info("planned %s: patch %s, spacing %s, features %s, batch %s", PLANS_NAME, list(cfg["patch_size"]),
                [round(float(s), 3) for s in cfg["spacing"]], list(cfg["architecture"]["arch_kwargs"]["features_per_stage"]),
                cfg["batch_size"])
    return plans


def patch_size_mm(plans: dict, configuration: str = CONFIGURATION) -> np.ndarray:
    """The configuration's patch extent in mm, (z, y, x) in nnU-Net's (transposed) array order."""
    cfg = plans["configurations"][configuration]
    return np.asarray(cfg["patch_size"], dtype=float) * np.asarray(cfg["spacing"], dtype=float)
