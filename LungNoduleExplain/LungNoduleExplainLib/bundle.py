"""The model bundle: one folder with a manifest, the classifier weights and (optionally) the nnU-Net model.

manifest.json holds the task set, per-output thresholds, patch spacing and size, the network configuration (and
`members`, the number of networks of that configuration averaged as an ensemble; 1 when absent), the prior the
classifier was trained with, training facts, metrics, package versions, and the SHA-256 of every file.
calibration.json (optional; calibration.py) maps each output's raw probability to a calibrated one and holds the
thresholds on that scale; a bundle without it is read as uncalibrated (raw scores and the manifest's thresholds).
Loading verifies every checksum first and reads weights with safetensors: nothing is unpickled from a bundle
before its checksum has matched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .atomic import write_json_atomic
from .attribution import MAP_SCALE_NAME, read_map_scale
from .calibration import CALIBRATION_NAME, Calibration, read_calibration
from .devices import use_onednn_convolutions
from .errors import BundleError
from .networks import Ensemble, NetworkConfig, build_network
from .output_folder import new_folder
from .patch import PATCH_SIZE_XYZ, SPACING_XYZ_MM
from .tasks import TaskSet
from .vocabulary import Prior

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "classifier.safetensors"
UNCHECKED_NAMES = (MANIFEST_NAME, "MODEL_CARD.md")  # read by people, never loaded
SEGMENTATION_DIR = "segmentation"
FORMAT_VERSION = 1


def default_bundle_path() -> Path:
    """The bundle shipped inside the package (trained on lidc-voi; see its MODEL_CARD.md)."""
    return Path(str(resources.files(__package__).joinpath("models", "default")))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelBundle:
    """A verified, loaded bundle. `model` is in eval mode on `device`."""

    path: Path
    manifest: dict
    task_set: TaskSet
    network: NetworkConfig
    thresholds: dict[str, float]
    model: nn.Module
    device: torch.device
    calibration: Calibration | None = None  # None: no calibration.json, probabilities are raw scores
    # map_scale.json (attribution.py): {map method: reference scale [members, n_outputs]}; None: maps min-max
    map_scales: dict | None = None

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def call_thresholds(self) -> dict[str, float]:
        """Thresholds on the scale of the probabilities shown: calibrated when the bundle is, else the manifest's."""
        return self.calibration.thresholds if self.calibration is not None else dict(self.thresholds)

    def calibrate(self, probs):  # noqa: ANN001, ANN201 - np.ndarray [N, n_outputs] in and out
        """Raw probabilities [N, n_outputs] (columns in output_names order) as shown: calibrated when the bundle
        has a calibration, else unchanged."""
        return probs if self.calibration is None else self.calibration.apply_all(probs, self.output_names)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "0"))

    @property
    def prior(self) -> str:
        """What the AAG prior was at training time: a vocabulary.Prior name."""
        return self.manifest.get("prior", Prior.REFERENCE_MASK.value)

    @property
    def members(self) -> int:
        """How many networks the classifier averages (1: a single network)."""
        return int(self.manifest.get("members", 1))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.manifest.get("spacing_xyz_mm", SPACING_XYZ_MM))

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.manifest.get("patch_size_xyz", PATCH_SIZE_XYZ))

    @property
    def output_names(self) -> list[str]:
        names = self.task_set.names
        return names if self.network.multitask else names[:1]

    @property
    def segmentation_dir(self) -> Path | None:
        folder = self.path / SEGMENTATION_DIR
        return folder if folder.is_dir() else None


def save_bundle(path: str | Path, model: nn.Module, task_set: TaskSet, network: NetworkConfig,
                thresholds: dict[str, float], *, name: str, prior: str, training: dict, metrics: dict,
                segmentation_dir: str | Path | None = None, version: str = "1",
                calibration: dict | None = None) -> Path:
    """Write a bundle folder atomically (output_folder.new_folder: built beside `path`, then renamed; an existing
    `path` is replaced, and kept when anything fails). An `Ensemble` model is recorded with its number of members;
    `calibration` (calibration.fit_calibration's document) is written as calibration.json, checksummed with the
    other files."""
    path = Path(path)
    with new_folder(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        if segmentation_dir is not None:
            shutil.copytree(segmentation_dir, tmp / SEGMENTATION_DIR)
        if calibration is not None:
            write_json_atomic(tmp / CALIBRATION_NAME, calibration)
        files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION, "name": name, "version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "intended_use": "research only; not for clinical decisions",
            "tasks": task_set.to_dict(), "thresholds": thresholds, "network": network.to_dict(),
            "members": len(model.members) if isinstance(model, Ensemble) else 1, "prior": prior,
            "spacing_xyz_mm": list(SPACING_XYZ_MM), "patch_size_xyz": list(PATCH_SIZE_XYZ),
            "training": training, "metrics": metrics,
            "versions": {"lungnodule_explain": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "files": files,
        }
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    return path


def add_calibration(path: str | Path, calibration: dict) -> Path:
    """Add (or replace) calibration.json in a verified bundle folder and list its checksum in the manifest; the
    calibration is validated against the bundle's outputs before anything is written (see add_bundle_file)."""
    return add_bundle_file(path, CALIBRATION_NAME, calibration, lambda names, manifest: Calibration.from_dict(
        calibration, names, f"calibration for {path}"))


def add_map_scale(path: str | Path, document: dict) -> Path:
    """Add (or replace) map_scale.json (attribution.read_map_scale's format) in a verified bundle folder and list
    its checksum in the manifest (see add_bundle_file; the weights stay byte-identical)."""
    return add_bundle_file(path, MAP_SCALE_NAME, document, lambda names, manifest: read_map_scale(
        document, names, int(manifest.get("members", 1)), f"map scale for {path}"))


def add_bundle_file(path: str | Path, name: str, document: dict,
                    check: Callable[[list[str], dict], object]) -> Path:
    """Write `document` as JSON file `name` into a verified bundle folder and list its checksum in the manifest.

    check(output names, manifest) validates the document first (raising BundleError). Atomic for the pair: a copy
    of the folder (files hard-linked where the file system allows, so the weights stay byte-identical and nothing
    large is copied) gets the new file and manifest, then replaces the folder."""
    path = Path(path)
    manifest = read_manifest(path)
    task_set = TaskSet.from_dict(manifest["tasks"], where=f"{path}/{MANIFEST_NAME} tasks")
    check(task_set.names if NetworkConfig(**manifest["network"]).multitask else task_set.names[:1], manifest)
    with new_folder(path) as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(".*", "__pycache__"))
        # the copies are hard links to the live files: the atomic writes replace a link, never write through it
        write_json_atomic(tmp / name, document)
        manifest["files"] = dict(sorted({**manifest["files"], name: sha256(tmp / name)}.items()))
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    return path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_manifest(path: str | Path) -> dict:
    """Read and verify a bundle's manifest and the checksum of every file it lists."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"model bundle {path}: {MANIFEST_NAME} not found (is this a bundle folder?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {path}: {MANIFEST_NAME} is not valid JSON ({exc})") from exc
    for key in ("tasks", "thresholds", "network", "files"):
        if key not in manifest:
            raise BundleError(f"model bundle {path}: {MANIFEST_NAME} lacks the field {key!r}")
    if WEIGHTS_NAME not in manifest["files"]:
        raise BundleError(f"model bundle {path}: manifest lists no {WEIGHTS_NAME}")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"model bundle {path}: file {name} listed in the manifest is missing")
        actual = sha256(file)
        if actual != expected:
            raise BundleError(f"model bundle {path}: checksum mismatch for {name} "
                              f"(expected sha256 {expected[:12]}..., got {actual[:12]}...); the file is corrupt "
                              "or was modified")
    # nnU-Net loads whatever fold_* folders and plans it finds: a file no checksum covers must not be there
    unlisted = sorted(name for name in (str(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file())
                      if name not in manifest["files"] and name not in UNCHECKED_NAMES
                      and not any(part.startswith(".") or part == "__pycache__" for part in Path(name).parts))
    if unlisted:
        raise BundleError(f"model bundle {path}: file(s) {unlisted} are not listed in {MANIFEST_NAME}, so no checksum "
                          "vouches for them; remove them or rebuild the bundle")
    return manifest


def load_bundle(path: str | Path | None = None, device: str | torch.device = "cpu") -> ModelBundle:
    """Verify and load a bundle (the shipped default when `path` is None)."""
    path = Path(path) if path is not None else default_bundle_path()
    manifest = read_manifest(path)
    try:
        task_set = TaskSet.from_dict(manifest["tasks"], where=f"{path}/{MANIFEST_NAME} tasks")
        network = NetworkConfig(**manifest["network"])
        members = int(manifest.get("members", 1))
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
    except (TypeError, ValueError) as exc:
        raise BundleError(f"model bundle {path}: invalid manifest ({exc})") from exc
    device = torch.device(device)
    model = build_network(network, len(task_set.manifestations), members)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME), device="cpu"))
    except (RuntimeError, OSError) as exc:
        raise BundleError(f"model bundle {path}: weights do not fit the network in the manifest ({exc})") from exc
    model.to(device).eval()
    if device.type == "cpu":  # a click classifies one nodule: keep its thin 3D convolutions off the im2col kernel
        use_onednn_convolutions(model)
    thresholds = {k: float(v) for k, v in manifest["thresholds"].items()}
    names = task_set.names if network.multitask else task_set.names[:1]
    calibration = read_calibration(path, manifest, names)
    return ModelBundle(path, manifest, task_set, network, thresholds, model, device, calibration,
                       _read_map_scales(path, manifest, names, members))


def _read_map_scales(path: Path, manifest: dict, names: list[str], members: int) -> dict | None:
    """The bundle's map_scale.json (checksum verified by read_manifest) or None when the manifest lists none."""
    if MAP_SCALE_NAME not in manifest["files"]:
        return None
    try:
        document = json.loads((path / MAP_SCALE_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {path}: {MAP_SCALE_NAME} is not valid JSON ({exc})") from exc
    return read_map_scale(document, names, members, f"model bundle {path}: {MAP_SCALE_NAME}")
