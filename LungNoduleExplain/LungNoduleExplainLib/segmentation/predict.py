"""Segment one clicked nodule with a trained nnU-Net v2 model folder: crop, predict, paste back, pick the component.

The model folder is nnU-Net's own results layout: `plans.json`, `dataset.json`, `fold_<k>/checkpoint_final.pth`.
Prediction goes through `nnUNetPredictor` (its preprocessing, sliding window, resampling back); the folds present
are ensembled by nnU-Net (their logits are averaged).

Checkpoints: nnU-Net's own `initialize_from_trained_model_folder` reads checkpoints with
`torch.load(weights_only=False)`, i.e. it unpickles arbitrary objects. This class instead loads them with
`torch.load(weights_only=True)` (tensors and plain containers only; `training.package_fold` writes checkpoints of
that kind) and builds the network from `plans.json` itself, handing both to `nnUNetPredictor.manual_initialization`.
A raw nnU-Net training checkpoint that holds other objects is refused with a BundleError. The model bundle is in
any case verified by SHA-256 checksum before it is loaded (bundle.py).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..devices import resolve_device, use_onednn_convolutions
from ..errors import BundleError, InputImageError
from ..patch import AIR_HU, PatchGeometry
from ..vocabulary import Device, PointSpace
from ..volume import MAX_SPACING_MM, MIN_SPACING_MM, point_to_lps

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_final.pth"
DEFAULT_CROP_MM: tuple[float, float, float] = (48.0, 48.0, 40.0)
DEFAULT_THRESHOLD = 0.5
# The second pass is centred on the nodule only while the click stays this far (mm) inside the moved crop.
RECENTRE_MARGIN_MM = 4.0
RECENT_CROPS = 8  # nnU-Net answers kept per segmenter (each about 0.3 MB at the default crop)
# Folds that find the nodule before the re-centred pass (None: all); one changed nothing that matters:
# benchmarks/locate_pass.
LOCATE_FOLDS: int | None = 1
# nnU-Net imports the classes plans.json names (pydoc.locate): allow only its architectures and torch.nn layers.
ARCHITECTURE_PREFIX = "dynamic_network_architectures.architectures."
LAYER_PREFIX = "torch.nn."


@dataclass
class SegmentationResult:
    """One segmented nodule.

    probability: float32 sitk.Image in [0, 1] on the CT's grid (0 outside the crop), before component selection.
    mask: uint8 sitk.Image on the CT's grid, 1 on the selected connected component only (may be empty).
    crop: the crop's grid (CT spacing and direction, LPS mm); crop_probability: the probability on that grid.
    point_lps: the clicked point (LPS mm). volume_mm3: the mask's volume. seconds: wall time of segment().
    """

    probability: sitk.Image
    mask: sitk.Image
    crop: PatchGeometry
    crop_probability: sitk.Image
    point_lps: tuple[float, float, float]
    volume_mm3: float
    seconds: float


def find_folds(model_dir: Path) -> list[int]:
    """Folds k with `fold_<k>/checkpoint_final.pth` in `model_dir`, sorted."""
    folds = []
    for sub in model_dir.glob("fold_*"):
        suffix = sub.name[len("fold_"):]
        if suffix.isdigit() and (sub / CHECKPOINT_NAME).is_file():
            folds.append(int(suffix))
    return sorted(folds)


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BundleError(f"segmentation model folder {path.parent} has no {path.name} ({what})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def load_weights_checkpoint(path: Path) -> dict:
    """A packaged fold checkpoint, loaded with weights_only=True; BundleError naming the file if it cannot be."""
    import torch
    if not path.is_file():
        raise BundleError(f"segmentation model fold missing: {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... on bad files
        raise BundleError(f"cannot load {path} as a weights-only checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); package it with "
                          "LungNoduleExplainLib.segmentation.training.package_fold") from exc
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise BundleError(f"{path}: expected an nnU-Net checkpoint with 'network_weights'")
    return checkpoint


class NoduleSegmenter:
    """An nnU-Net v2 nodule model loaded once; `segment(ct, point)` per click.

    model_dir: nnU-Net results folder (plans.json, dataset.json, fold_k/checkpoint_final.pth).
    folds: which folds to ensemble (default: all present). crop_mm: the crop (x, y, z) in mm around the point,
    taken at the CT's native resolution; the default 48 x 48 x 40 mm holds nodules up to 30 mm with context and is
    4 sliding windows of the shipped plans. threshold: probability at which a voxel is nodule.
    recentre: segment a second time with the crop centred on the box of the component found at the click, so that
    where inside a nodule the user clicked barely changes the result (the probability map, which feeds the
    classifier's prior, otherwise follows the crop's edges and nnU-Net's tiling: benchmarks/click_stability).
    recent_crops: how many of nnU-Net's answers to keep by the crop's exact voxels (0: none, e.g. for timing).
    locate_folds: with recentre, how many folds (the first ones) find the nodule for the first pass; the result is
    always the whole ensemble's, on the re-centred crop (or on the first crop when it stays). None: every fold
    (the first pass then costs as much as the second; benchmarks/locate_pass).
    Raises BundleError naming the missing or unreadable file.

    On CPU the network's 3D convolutions are switched to oneDNN (devices.use_onednn_convolutions): nnU-Net predicts
    one tile at a time, and PyTorch's own choice for a batch of one is 4-5x slower with these thin layers.
    """

    def __init__(self, model_dir: str | Path, folds: Sequence[int] | None = None, device: str | None = Device.AUTO,
                 use_mirroring: bool = False, crop_mm: Sequence[float] = DEFAULT_CROP_MM,
                 threshold: float = DEFAULT_THRESHOLD, tile_step_size: float = 0.5, recentre: bool = True,
                 recent_crops: int = RECENT_CROPS, locate_folds: int | None = LOCATE_FOLDS):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise BundleError(f"segmentation model folder {self.model_dir} does not exist")
        plans = _load_json(self.model_dir / "plans.json", "nnU-Net plans")
        dataset_json = _load_json(self.model_dir / "dataset.json", "nnU-Net dataset description")
        available = find_folds(self.model_dir)
        self.folds = tuple(int(f) for f in folds) if folds is not None else tuple(available)
        if not self.folds:
            raise BundleError(f"segmentation model folder {self.model_dir} has no fold_<k>/{CHECKPOINT_NAME}")
        checkpoints = [load_weights_checkpoint(self.model_dir / f"fold_{k}" / CHECKPOINT_NAME) for k in self.folds]
        if len(crop_mm) != 3 or min(crop_mm) <= 0:
            raise ValueError(f"crop_mm must be 3 positive sizes (x, y, z) in mm, got {tuple(crop_mm)}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.crop_mm = tuple(float(c) for c in crop_mm)
        self.threshold = float(threshold)
        self.recentre = bool(recentre)
        self.device = resolve_device(device)
        self._predictor = self._make_predictor(plans, dataset_json, checkpoints, use_mirroring, tile_step_size)
        self._locator = self._predictor
        if recentre and locate_folds is not None and 0 < locate_folds < len(checkpoints):
            self._locator = self._predictor_like(self._predictor, self._predictor.list_of_parameters[:locate_folds])
        self._recent: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self._recent_crops = int(recent_crops)

    def _make_predictor(self, plans: dict, dataset_json: dict, checkpoints: list[dict], use_mirroring: bool,
                        tile_step_size: float):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(plans)
        configuration = configuration_of(checkpoints[0])
        if configuration not in plans_manager.available_configurations:
            raise BundleError(f"{self.model_dir / 'plans.json'} has no configuration {configuration!r}")
        configuration_manager = plans_manager.get_configuration(configuration)
        check_architecture_imports(configuration_manager, self.model_dir / "plans.json", configuration)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        parameters = [c["network_weights"] for c in checkpoints]
        try:
            network.load_state_dict(parameters[0])
        except RuntimeError as exc:
            raise BundleError(f"fold_{self.folds[0]} weights do not fit the network in "
                              f"{self.model_dir / 'plans.json'}: {str(exc).splitlines()[0]}") from exc
        if self.device.type == "cpu":
            use_onednn_convolutions(network)
        mirror_axes = checkpoints[0].get("inference_allowed_mirroring_axes")
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a CPU notice; keep stdout clean
            predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                        use_mirroring=use_mirroring,
                                        perform_everything_on_device=self.device.type == "cuda",
                                        device=self.device, verbose=False, allow_tqdm=False)
            predictor.manual_initialization(network.to(self.device), plans_manager, configuration_manager,
                                            parameters, dataset_json, "nnUNetTrainer",
                                            tuple(mirror_axes) if mirror_axes is not None else None)
        return predictor

    @staticmethod
    def _predictor_like(predictor, parameters: list[dict]):  # noqa: ANN001, ANN205 - nnU-Net's types
        """A second nnU-Net predictor on the same network with fewer folds' weights (nnU-Net loads a fold's
        weights into the network before each prediction, so the two may share it)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        with contextlib.redirect_stdout(io.StringIO()):
            other = nnUNetPredictor(tile_step_size=predictor.tile_step_size, use_gaussian=predictor.use_gaussian,
                                    use_mirroring=predictor.use_mirroring,
                                    perform_everything_on_device=predictor.perform_everything_on_device,
                                    device=predictor.device, verbose=False, allow_tqdm=False)
            other.manual_initialization(predictor.network, predictor.plans_manager, predictor.configuration_manager,
                                        parameters, predictor.dataset_json, predictor.trainer_name,
                                        predictor.allowed_mirroring_axes)
        return other

    def predict_array(self, hu_zyx: np.ndarray, spacing_zyx: Sequence[float], *, locate: bool = False) -> np.ndarray:
        """nnU-Net's nodule probability for a HU array [z, y, x] with spacing (z, y, x) mm; same shape, float32,
        read-only. The last few answers are kept by the crop's exact voxels and spacing: a click beside the previous
        one is often re-centred onto the same crop, and nnU-Net would only compute the same numbers again.
        locate: the locating folds' answer (locate_folds)."""
        hu = np.ascontiguousarray(hu_zyx, dtype=np.float32)
        spacing = [float(s) for s in spacing_zyx]
        predictor = self._locator if locate else self._predictor
        key = hashlib.blake2b(hu.tobytes(), digest_size=16)
        key.update(np.asarray(hu.shape + tuple(spacing) + (len(predictor.list_of_parameters),),
                              dtype=np.float64).tobytes())
        key = key.digest()
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        with contextlib.redirect_stdout(io.StringIO()):
            _, probabilities = predictor.predict_single_npy_array(hu[None], {"spacing": spacing}, None, None, True)
        probability = np.clip(np.asarray(probabilities[1], dtype=np.float32), 0.0, 1.0)
        probability.setflags(write=False)
        self._recent[key] = probability
        while len(self._recent) > self._recent_crops:
            self._recent.popitem(last=False)
        return probability

    def segment(self, ct: sitk.Image, point: Sequence[float], space: PointSpace | str = PointSpace.LPS,
                crop_mm: Sequence[float] | None = None) -> SegmentationResult:
        """Segment the nodule at `point` (RAS/LPS mm or voxel index i, j, k) of `ct` (HU).

        The crop (x y z mm; default: the segmenter's crop_mm) is cut at native resolution around the point, padded
        with air outside the CT; maps come back on the CT's grid. Raises InputImageError for an
        unusable image and PointError for a point outside it.
        """
        start_time = time.perf_counter()
        _check_image(ct)
        point_lps = point_to_lps(point, space, ct)
        crop_mm = self.crop_mm if crop_mm is None else crop_mm
        locating = self.recentre and self._locator is not self._predictor
        probability, mask, start, geometry = self._segment_crop(ct, point_lps, crop_mm, locate=locating)
        centre = recentred_crop_centre(ct, mask, start, point_lps, crop_mm) if self.recentre else None
        if centre is not None or locating:  # the whole ensemble segments, on the re-centred crop if there is one
            probability, mask, start, geometry = self._segment_crop(ct, point_lps, crop_mm, crop_centre_lps=centre)
        result = SegmentationResult(
            probability=paste_crop(probability, start, ct, np.float32),
            mask=paste_crop(mask.astype(np.uint8), start, ct, np.uint8),
            crop=geometry, crop_probability=_image_like(probability, geometry),
            point_lps=tuple(float(v) for v in point_lps),
            volume_mm3=float(mask.sum() * np.prod(ct.GetSpacing())), seconds=time.perf_counter() - start_time)
        logger.debug("segmented at %s: %.0f mm3 in %.2f s", result.point_lps, result.volume_mm3, result.seconds)
        return result

    def _segment_crop(self, ct: sitk.Image, point_lps: np.ndarray, crop_mm: Sequence[float],
                      crop_centre_lps: np.ndarray | None = None, locate: bool = False):
        """Probability and the component at the point on the crop of `crop_mm` around `crop_centre_lps` (default:
        the point), its start and geometry; locate: by the locating folds only."""
        crop_hu, geometry, start = crop_around(ct, point_lps if crop_centre_lps is None else crop_centre_lps, crop_mm)
        spacing_zyx = ct.GetSpacing()[::-1]
        probability = self.predict_array(crop_hu, spacing_zyx, locate=locate)
        center_index = np.asarray(ct.TransformPhysicalPointToContinuousIndex(point_lps.tolist()))[::-1] - start[::-1]
        mask = select_component(probability >= self.threshold, center_index, spacing_zyx)
        return probability, mask, start, geometry


def recentred_crop_centre(ct: sitk.Image, mask_zyx: np.ndarray, start: np.ndarray, point_lps: np.ndarray,
                          crop_mm: Sequence[float]) -> np.ndarray | None:
    """Centre (LPS mm) of the bounding box of the component `mask_zyx` (on the crop that starts at CT index
    `start`), where a second crop should be centred; None when that crop would be the same one, when nothing was
    segmented, or when the click would come closer than RECENTRE_MARGIN_MM to the moved crop's edge (a large
    structure: the first field is kept)."""
    k, j, i = np.nonzero(mask_zyx)
    if len(i) == 0:
        return None
    index = np.array([(i.min() + i.max()) / 2.0, (j.min() + j.max()) / 2.0, (k.min() + k.max()) / 2.0]) + start
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))
    # the click, in mm along the CT's axes from the new centre, must stay inside the crop with a margin
    offset = np.abs(np.asarray(ct.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps])) - index)
    if np.any(offset * np.asarray(ct.GetSpacing()) > np.asarray(crop_mm, dtype=float) / 2.0 - RECENTRE_MARGIN_MM):
        return None
    if np.array_equal(crop_around_start(ct, centre, crop_mm), start):
        return None
    return centre


def check_architecture_imports(configuration_manager, plans_path: Path, configuration: str) -> None:  # noqa: ANN001
    """BundleError unless every name nnU-Net would import for the network is an nnU-Net architecture or a
    torch.nn layer: a plan must not make loading a model import (run) arbitrary code."""
    kwargs = configuration_manager.network_arch_init_kwargs
    names = [("network_class_name", configuration_manager.network_arch_class_name, ARCHITECTURE_PREFIX)]
    names += [(k, kwargs.get(k), LAYER_PREFIX) for k in configuration_manager.network_arch_init_kwargs_req_import
              if kwargs.get(k) is not None]
    for field, name, prefix in names:
        if not isinstance(name, str) or not name.startswith(prefix):
            raise BundleError(f"{plans_path} configuration {configuration!r}: {field} {name!r} is not allowed; "
                              f"expected a name starting with {prefix!r}")


def configuration_of(checkpoint: dict) -> str:
    return checkpoint.get("init_args", {}).get("configuration", "3d_fullres")


def _check_image(ct: sitk.Image) -> None:
    if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
        raise InputImageError(f"expected a 3D SimpleITK CT image, got {type(ct).__name__}"
                              + (f" of dimension {ct.GetDimension()}" if isinstance(ct, sitk.Image) else ""))
    if ct.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"expected a single-channel CT, got {ct.GetNumberOfComponentsPerPixel()} components")
    spacing = ct.GetSpacing()
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputImageError(f"CT spacing {tuple(round(s, 4) for s in spacing)} mm is missing or absurd; expected "
                              f"each axis in [{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm")


def crop_around(ct: sitk.Image, point_lps: Sequence[float],
                crop_mm: Sequence[float]) -> tuple[np.ndarray, PatchGeometry, np.ndarray]:
    """Cut a box of `crop_mm` (x, y, z) centred on the point from `ct`'s voxel grid; air outside the CT.

    Returns (HU array [z, y, x] float32, the crop's geometry, start index (i, j, k) in the CT, may be negative).
    The crop's voxels are the CT's voxels: nothing is interpolated.
    """
    spacing = np.asarray(ct.GetSpacing())
    n = crop_voxels(ct, crop_mm)
    start = crop_around_start(ct, point_lps, crop_mm)
    size = np.asarray(ct.GetSize())
    lo, hi = np.maximum(start, 0), np.minimum(start + n, size)
    crop = np.full(n[::-1], AIR_HU, dtype=np.float32)
    if np.all(hi > lo):
        source = sitk.GetArrayViewFromImage(ct)[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        d = lo - start
        crop[d[2]:d[2] + source.shape[0], d[1]:d[1] + source.shape[1], d[0]:d[0] + source.shape[2]] = source
    origin = ct.TransformContinuousIndexToPhysicalPoint([float(v) for v in start])
    geometry = PatchGeometry(tuple(float(v) for v in origin), tuple(float(s) for s in spacing),
                             tuple(int(v) for v in n), tuple(float(v) for v in ct.GetDirection()))
    return crop, geometry, start


def crop_voxels(ct: sitk.Image, crop_mm: Sequence[float]) -> np.ndarray:
    """Voxels (i, j, k) of a crop of `crop_mm` (x, y, z) at the CT's own spacing."""
    return np.maximum(np.round(np.asarray(crop_mm, dtype=float) / np.asarray(ct.GetSpacing())).astype(int), 1)


def crop_around_start(ct: sitk.Image, point_lps: Sequence[float], crop_mm: Sequence[float]) -> np.ndarray:
    """CT index (i, j, k) of the first voxel of the crop of `crop_mm` centred on the point (may be negative)."""
    centre = np.asarray(ct.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps]))
    return np.round(centre - (crop_voxels(ct, crop_mm) - 1) / 2.0).astype(int)


def paste_crop(array_zyx: np.ndarray, start: np.ndarray, ct: sitk.Image, dtype) -> sitk.Image:
    """Place a crop-grid array (from crop_around's `start`) into a zero image with `ct`'s geometry."""
    size = np.asarray(ct.GetSize())
    n = np.asarray(array_zyx.shape[::-1])
    lo, hi = np.maximum(start, 0), np.minimum(start + n, size)
    full = np.zeros(size[::-1], dtype=dtype)
    if np.all(hi > lo):
        d = lo - start
        e = d + (hi - lo)
        full[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = array_zyx[d[2]:e[2], d[1]:e[1], d[0]:e[0]]
    image = sitk.GetImageFromArray(full)
    image.CopyInformation(ct)
    return image


def select_component(mask_zyx: np.ndarray, point_zyx: Sequence[float], spacing_zyx: Sequence[float]) -> np.ndarray:
    """Keep the 26-connected component containing the point (continuous index z, y, x), else the nearest one (mm)."""
    if not mask_zyx.any():
        return np.zeros_like(mask_zyx, dtype=bool)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask_zyx.astype(np.uint8)),
                                                             True))
    index = np.round(np.asarray(point_zyx)).astype(int)
    if np.all(index >= 0) and np.all(index < labels.shape) and labels[tuple(index)] > 0:
        return labels == labels[tuple(index)]
    coords = np.argwhere(labels > 0)
    distances = np.linalg.norm((coords - np.asarray(point_zyx)) * np.asarray(spacing_zyx), axis=1)
    nearest = coords[int(np.argmin(distances))]
    return labels == labels[tuple(nearest)]


def _image_like(array_zyx: np.ndarray, geometry: PatchGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image
