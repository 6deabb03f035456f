"""Dice and cross-validation summaries for nodule segmentation."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..data.voi_table import NoduleRecord, read_image
from ..errors import DatasetError
from ..metrics import dice, mean_with_ci
from ..progress import Progress, report_count

logger = logging.getLogger(__name__)


def seed_point(record: NoduleRecord, image: sitk.Image, reference: sitk.Image | None) -> tuple[float, ...]:
    """The point to segment a table row's nodule from: its centre, or, where that lies outside its image (a few
    lidc-voi rows), the centroid of its mask (LPS mm)."""
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in record.center_lps]))
    if np.all(index >= -0.5) and np.all(index <= np.asarray(image.GetSize()) - 0.5):
        return tuple(record.center_lps)
    voxels = np.argwhere(sitk.GetArrayViewFromImage(reference) > 0) if reference is not None else np.empty((0, 3))
    if len(voxels) == 0:
        raise DatasetError(f"case {record.case_id}: centre {record.center_lps} lies outside its image "
                           f"{record.image_path} and there is no mask to find the nodule")
    centroid = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in voxels.mean(axis=0)[::-1]])
    logger.warning("case %s: table centre %s lies outside its image; using the mask centroid %s",
                   record.case_id, tuple(round(v, 1) for v in record.center_lps), tuple(round(v, 1) for v in centroid))
    return tuple(centroid)


def segmentation_dice(segmenter, records: Sequence[NoduleRecord],
                      progress: Progress | None = None) -> dict[str, float]:
    """Per-case Dice of `segmenter.segment(image, seed_point(...))`'s mask against each record's mask.

    `segmenter` is a NoduleSegmenter (or anything with that `segment`); records come from read_voi_table.
    Raises DatasetError for a record without a mask.
    """
    scores: dict[str, float] = {}
    for n, record in enumerate(records):
        if record.mask_path is None:
            raise DatasetError(f"case {record.case_id} has no mask; Dice needs the table's `mask` column")
        image = read_image(record.image_path)
        reference = read_image(record.mask_path, f"mask of case {record.case_id}", on_grid_of=image)
        result = segmenter.segment(image, seed_point(record, image, reference))
        scores[record.case_id] = dice(result.mask, reference)
        report_count(progress, n + 1, len(records), record.case_id)
    return scores


def dice_at_point(probability: sitk.Image, reference: sitk.Image, point_lps, threshold: float = 0.5) -> float:
    """Dice of the component of `probability >= threshold` at (or nearest) `point_lps` against `reference`.

    The same selection NoduleSegmenter.segment applies, for a probability map saved earlier (e.g. an OOF map).
    """
    from .predict import select_component

    index = np.asarray(probability.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps]))[::-1]
    mask = select_component(sitk.GetArrayViewFromImage(probability) >= threshold, index,
                            probability.GetSpacing()[::-1])
    return dice(mask, reference)


def bootstrap_mean_ci(values: Mapping[str, float], group_of: Mapping[str, str], n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of `values` (case -> value) with a percentile bootstrap CI resampling GROUPS (patients):
    metrics.mean_with_ci over the cases in sorted order."""
    cases = sorted(values)
    if not cases:
        raise ValueError("no values to summarise")
    r = mean_with_ci([values[c] for c in cases], [group_of[c] for c in cases], n_boot=n_boot, seed=seed, level=level)
    return r["mean"], r["ci_low"], r["ci_high"]
