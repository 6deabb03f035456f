"""Click to explanation: `Analyzer(bundle).analyze(ct, point) -> Finding`, the one pipeline every face calls.

CT + point -> nnU-Net segmentation around the point -> classifier patch + prior -> probabilities + SAM maps ->
maps back onto the CT grid -> Finding. The bundle (classifier + segmentation model) is loaded once per Analyzer.

The classifier was trained on LIDC VOIs: tight boxes around each nodule, padded with air. A crop of a whole CT
has far more context, so the patch is cut the same way here: CT voxels inside a VOI-like box around the
segmented nodule (in-plane at least 32 mm or the nodule extent plus 6 mm a side, in z the nodule extent plus
1 mm), air outside.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from . import attribution, explain
from .bundle import ModelBundle, load_bundle
from .calibration import UNCALIBRATED_NOTICE
from .errors import BundleError, NoNoduleError, PointError
from .finding import Finding, OutputResult, mask_size
from .nodule_check import refusal_message, segment_and_check
from .networks.ensemble import member_probabilities
from .patch import PatchGeometry, extract_patch, mask_box_lps, resample_to_grid
from .progress import Progress
from .devices import resolve_device
from .vocabulary import Device, PointSpace
from .volume import point_to_lps, validate_ct

logger = logging.getLogger(__name__)

AIR_SEARCH_RADIUS_MM = 10.0


def check_tissue_near(ct: sitk.Image, point_lps: np.ndarray, radius_mm: float = AIR_SEARCH_RADIUS_MM) -> None:
    """Raise PointError when nothing denser than -500 HU lies within `radius_mm` of the point (clicked in air)."""
    geometry = PatchGeometry.centred_at(point_lps, (1.0, 1.0, 1.0), (int(2 * radius_mm) + 1,) * 3)
    hu = resample_to_grid(ct, geometry, interpolator=sitk.sitkNearestNeighbor)
    if float(hu.max()) < -500.0:
        raise PointError(f"point {tuple(np.round(point_lps, 1))} (LPS mm) lies in air: no tissue denser than "
                         f"-500 HU within {radius_mm:g} mm; click on the nodule")


class Analyzer:
    """Loads a bundle once and analyses any number of clicked points.

    bundle: a bundle folder, an already loaded ModelBundle, or None for the bundle shipped with the package.
    device: a vocabulary.Device name (devices.choose_device: "auto" is CUDA when available, else the CPU; "cuda"
    without CUDA is a ConfigError). progress(fraction, message) is called per stage.
    segmenter: an object with `segment(ct, point_lps) -> SegmentationResult` (default: the bundle's nnU-Net model).
    """

    def __init__(self, bundle: str | Path | ModelBundle | None = None, device: str = Device.AUTO,
                 progress: Progress | None = None, segmenter=None,  # noqa: ANN001
                 map_method: str = attribution.DEFAULT_MAP_METHOD) -> None:
        start = time.perf_counter()
        if map_method not in attribution.MAP_METHODS:
            raise ValueError(f"map method must be one of {attribution.MAP_METHODS}, got {map_method!r}")
        self.map_method = map_method
        self.device = resolve_device(device)
        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle, device=self.device)
        self.progress = progress
        # A threshold absent from the manifest must not show up in reports as a made-up 0.5.
        missing = [n for n in self.bundle.output_names if n not in self.bundle.thresholds]
        if missing:
            raise BundleError(f"model bundle {self.bundle.path}: manifest.json 'thresholds' has no value for "
                              f"output(s) {missing}; expected one threshold per output {self.bundle.output_names}")
        if segmenter is None:
            if self.bundle.segmentation_dir is None:
                raise BundleError(f"model bundle {self.bundle.path} has no segmentation model "
                                  "(segmentation/ folder); analysis needs one to find the nodule")
            from .segmentation.predict import NoduleSegmenter
            segmenter = NoduleSegmenter(self.bundle.segmentation_dir, device=self.device.type)
        self.segmenter = segmenter
        self.load_seconds = time.perf_counter() - start

    def _report(self, fraction: float, message: str) -> None:
        logger.debug(message)
        if self.progress:
            self.progress(fraction, message)

    @torch.inference_mode()
    def analyze(self, ct: sitk.Image, point: Sequence[float], space: PointSpace | str = PointSpace.RAS, *,
                classify_anyway: bool = False) -> Finding:
        """Analyse the nodule at `point` (RAS mm by default, as Slicer; or LPS mm, or voxel index i, j, k).

        Raises NoNoduleError (its message says what was found instead) when nodule_check finds no nodule at the
        point, unless `classify_anyway` (research): then the Finding carries the reason as a warning and in
        `nodule_check`."""
        timings: dict[str, float] = {}
        warnings: list[str] = []
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = now - clock
            clock = now

        validate_ct(ct)
        point_lps = point_to_lps(point, space, ct)
        check_tissue_near(ct, point_lps)
        lap("check")
        self._report(0.1, "segmenting the nodule")
        seg, check = segment_and_check(self.segmenter, ct, point_lps)
        lap("segment")
        if not check.found and not classify_anyway:
            raise NoNoduleError(refusal_message(point_lps, check), check, tuple(float(v) for v in point_lps))
        if not check.found:
            warnings.append(f"NO NODULE FOUND at the point: {check.reason}. Classified anyway on request "
                            "(research): the probabilities below do not describe a nodule")
        warnings.extend(check.warnings)
        box = mask_box_lps(seg.mask)
        if box is None:
            warnings.append("no nodule was segmented at the point: the patch is centred on the click and the "
                            "prior is nnU-Net's (low) probability; interpret with care")
            centre = point_lps
        else:
            centre = (box[0] + box[1]) / 2.0
        self._report(0.5, "classifying")

        def to_tensor(a: np.ndarray) -> torch.Tensor:  # [C, D, H, W] -> [1, C, D, H, W]
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None].to(self.device)

        network = self.bundle.network
        patch = extract_patch(ct, centre, seg.probability, channels=network.inputs, spacing=self.bundle.spacing,
                              size=self.bundle.patch_size, voi_box=box, with_descriptors=network.descriptors)
        image, prior, voi, geometry = patch.image, patch.prior, patch.voi, patch.geometry
        descriptors = to_tensor(patch.descriptors) if network.descriptors else None
        lap("crop")
        # each member's probability in one pass: the ensemble's is their mean (Ensemble.forward), their range the
        # spread shown beside it
        members = member_probabilities(self.bundle.model, to_tensor(image), to_tensor(prior[None]), descriptors)
        members = members[:, 0].float().cpu().numpy()  # [n_members, n_outputs]
        # maps: set to 0 outside the CT the network saw (voi), on the output's reference scale (map_scale.json)
        scales = (self.bundle.map_scales or {}).get(self.map_method)
        maps = attribution.displayed_maps(self.bundle.model, to_tensor(image), to_tensor(prior[None]), descriptors,
                                          voi, self.map_method, scales)
        terms = attribution.mean_logit_terms(self.bundle.model, to_tensor(image), to_tensor(prior[None]),
                                             descriptors)
        raw = members.mean(axis=0)
        probabilities = self.bundle.calibrate(raw[None])[0]
        members = self.bundle.calibrate(members)  # each member through the same map
        thresholds = self.bundle.call_thresholds
        if not self.bundle.calibrated:
            warnings.append(UNCALIBRATED_NOTICE)
        lap("classify")
        self._report(0.8, "mapping explanations onto the CT")
        outputs = []
        tasks = self.bundle.task_set.all_tasks
        for k, name in enumerate(self.bundle.output_names):
            outputs.append(OutputResult(
                name=name, kind="diagnosis" if k == 0 else "manifestation", description=tasks[k].description,
                probability=float(probabilities[k]), threshold=float(thresholds[name]),
                activation_map=explain.to_ct_grid(maps[k], geometry, ct), raw_probability=float(raw[k]),
                raw_threshold=float(self.bundle.thresholds[name]),
                member_probabilities=[float(v) for v in members[:, k]] if len(members) > 1 else [],
                logit_terms={t: float(v[k]) for t, v in terms.items()}))
        display = attribution.map_display(self.map_method, scales is not None)
        lap("paste")
        diameter, volume = mask_size(seg.mask)
        self._report(1.0, "done")
        return Finding(point_lps=tuple(float(v) for v in point_lps), outputs=outputs, segmentation=seg.mask,
                       segmentation_probability=seg.probability, diameter_mm=diameter, volume_mm3=volume,
                       model_name=self.bundle.name, model_version=self.bundle.version, prior="nnunet",
                       device=self.device.type, timings_s=timings, warnings=warnings, nodule_check=check,
                       map_display=display,
                       calibrated=self.bundle.calibrated)


def analyze(ct: sitk.Image, point: Sequence[float], bundle: str | Path | ModelBundle | None = None, *,
            space: PointSpace | str = PointSpace.RAS, device: str = Device.AUTO) -> Finding:
    """One-shot convenience: load the bundle and analyse one point (use Analyzer for many points)."""
    return Analyzer(bundle, device=device).analyze(ct, point, space=space)
