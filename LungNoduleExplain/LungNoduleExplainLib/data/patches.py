"""Classifier inputs for a whole nodule table: patches, priors and labels, plus the training augmentations.

Patches are cut once per table (a few seconds for hundreds of nodules) and kept in memory as float16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from ..descriptors import DESCRIPTOR_NAMES
from ..errors import DatasetError
from ..patch import PATCH_SIZE_XYZ, SPACING_XYZ_MM, extract_patch
from ..progress import Progress, report_count
from ..tasks import TaskSet
from ..vocabulary import Prior
from .voi_table import NoduleRecord, read_image

logger = logging.getLogger(__name__)



@dataclass
class PatchSet:
    """images: [N, C, D, H, W] (the image channels named in `channels`), priors: [N, D, H, W], float16 in [0, 1];
    labels: [N, 1 + K] float32 with NaN where left out; descriptors: [N, len(DESCRIPTOR_NAMES)] float32.
    targets: what the training loss fits, [N, 1 + K] in [0, 1] with NaN where left out (Task.target: the readers'
    share where the table has each reader's rating, else the label); None means the labels. Metrics, model
    selection and thresholds use `labels`."""

    images: np.ndarray
    priors: np.ndarray
    labels: np.ndarray
    case_ids: list[str]
    patient_ids: list[str]
    diameters_mm: np.ndarray
    descriptors: np.ndarray
    channels: tuple[str, ...]
    targets: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.targets is None:
            self.targets = self.labels

    def subset(self, index: Sequence[int]) -> "PatchSet":
        idx = np.asarray(index, dtype=int)
        return PatchSet(self.images[idx], self.priors[idx], self.labels[idx], [self.case_ids[i] for i in idx],
                        [self.patient_ids[i] for i in idx], self.diameters_mm[idx], self.descriptors[idx],
                        self.channels, self.targets[idx])

    def channel_indices(self, inputs: Sequence[str]) -> list[int]:
        """Where the channels a network takes (NetworkConfig.inputs) lie in `images`."""
        missing = [c for c in inputs if c not in self.channels]
        if missing or not inputs:
            raise ValueError(f"the network takes image channels {list(inputs)}; these patches hold "
                             f"{list(self.channels)}")
        return [self.channels.index(c) for c in inputs]

    def __len__(self) -> int:
        return len(self.case_ids)


def prior_path(record: NoduleRecord, prior: str) -> Path | None:
    """Where the prior of `record` lives: its reference mask, or `<prior folder>/<case_id>.nii.gz`."""
    if prior == Prior.REFERENCE_MASK:
        return record.mask_path
    return Path(prior) / f"{record.case_id}.nii.gz"


def build_patch_set(records: Sequence[NoduleRecord], task_set: TaskSet, prior: str = Prior.REFERENCE_MASK, *,
                    channels: Sequence[str], spacing: Sequence[float] = SPACING_XYZ_MM, size: Sequence[int] = PATCH_SIZE_XYZ,
                    prior_maps: Callable[[NoduleRecord, sitk.Image], sitk.Image] | None = None,
                    progress: Progress | None = None, training_targets: bool = False) -> PatchSet:
    """Cut the patch of every record (patch.extract_patch, analysis's path too), centred on its `center_*_mm`,
    with its prior map and the image `channels` asked for (a network's inputs, or patch.INPUT_CHANNELS for several).

    prior: "reference-mask" (the table's masks) or a folder of probability maps named `<case_id>.nii.gz` on the
    image grid (e.g. out-of-fold nnU-Net probabilities). `prior_maps(record, ct)`, when given, computes the prior
    instead (e.g. nnU-Net run on the image at evaluation time). Raises InputImageError naming a corrupt file.
    training_targets: also read each output's training target (readers' shares, Task.target), before any patch is
    cut, so a bad readers' cell stops a training at once; without it (evaluation) the targets are the labels and
    those columns are not read.
    """
    n, shape = len(records), tuple(reversed([int(s) for s in size]))
    channels = tuple(channels)
    images = np.empty((n, len(channels), *shape), dtype=np.float16)
    priors = np.empty((n, *shape), dtype=np.float16)
    labels = np.full((n, len(task_set.all_tasks)), np.nan, dtype=np.float32)
    targets = None
    if training_targets:
        targets = np.array([[np.nan if t is None else t for t in r.targets(task_set)] for r in records],
                           dtype=np.float32).reshape(labels.shape)
    descriptors = np.empty((n, len(DESCRIPTOR_NAMES)), dtype=np.float32)
    for i, record in enumerate(records):
        ct = read_image(record.image_path, f"image of case {record.case_id}")
        if prior_maps is not None:
            prior_image = prior_maps(record, ct)
        else:
            path = prior_path(record, prior)
            if path is None or not path.is_file():
                raise DatasetError(f"prior map for case {record.case_id} not found: {path}")
            what = "mask" if prior == Prior.REFERENCE_MASK else "prior map"
            prior_image = read_image(path, f"{what} of case {record.case_id}", on_grid_of=ct)
        patch = extract_patch(ct, record.center_lps, prior_image, channels=channels, spacing=spacing, size=size)
        images[i], priors[i], descriptors[i] = patch.image, patch.prior, patch.descriptors
        labels[i] = [np.nan if y is None else y for y in record.labels(task_set)]
        if i % 16 == 0 or i == n - 1:
            report_count(progress, i + 1, n, f"patches {i + 1}/{n}")
    return PatchSet(images, priors, labels, [r.case_id for r in records], [r.patient_id for r in records],
                    np.array([r.diameter_mm for r in records], dtype=np.float32), descriptors, channels, targets)


def augment(image: np.ndarray, prior: np.ndarray, rng: np.random.Generator,
            channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The authors' augmentations: random flips, rot90 in the axial plane, gamma contrast 0.9-1.1 (p = 0.4).

    image [C, D, H, W] with the named `channels`, prior [D, H, W]; the same spatial transform goes to every channel
    and the prior. rot90 stays in-plane (H = W = 64) so the patch shape never changes. Gamma touches the
    percentile channels only (by name): the HU-window channel keeps absolute density.
    """
    for axis in range(3):
        if rng.random() < 0.5:
            image, prior = np.flip(image, axis + 1), np.flip(prior, axis)
    k = int(rng.integers(4))
    image, prior = np.rot90(image, k, axes=(2, 3)), np.rot90(prior, k, axes=(1, 2))
    image = np.array(image)
    if rng.random() < 0.4:
        gamma = rng.uniform(0.9, 1.1)
        for c, name in enumerate(channels):
            if name.startswith("percentile"):
                image[c] = np.power(np.clip(image[c], 0.0, 1.0), gamma)
    return np.ascontiguousarray(image), np.ascontiguousarray(prior)


class PatchDataset(Dataset):
    """Torch view of a PatchSet: (image [C, D, H, W], prior [1, D, H, W], descriptors [n], targets [1 + K]) float32
    tensors (targets: what the loss fits, PatchSet.targets). Flips and in-plane rot90 leave the descriptors
    unchanged, so they are not recomputed.

    inputs: the image channels the network takes, by name (NetworkConfig.inputs).

    With `augment_seed` set, item i of epoch e is augmented with a generator seeded by (seed, epoch, i), so a
    resumed run sees exactly the augmentations an uninterrupted run would.
    """

    def __init__(self, patches: PatchSet, *, inputs: Sequence[str], augment_seed: int | None = None) -> None:
        self.patches = patches
        self.inputs = tuple(inputs)
        self.channels = patches.channel_indices(self.inputs)
        self.augment_seed = augment_seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.patches.images[i, self.channels].astype(np.float32)
        prior = self.patches.priors[i].astype(np.float32)
        if self.augment_seed is not None:
            image, prior = augment(image, prior, np.random.default_rng([self.augment_seed, self.epoch, i]),
                                   self.inputs)
        return (torch.from_numpy(image), torch.from_numpy(prior)[None],
                torch.from_numpy(self.patches.descriptors[i]), torch.from_numpy(self.patches.targets[i]))
