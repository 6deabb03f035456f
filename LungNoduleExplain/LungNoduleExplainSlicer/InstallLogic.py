"""First use: check the Slicer version and the engine's Python packages, and install what is missing, once asked.

Which Slicer: 5.10 or later (MINIMUM_SLICER_VERSION). Slicer 5.6 and 5.8 run Python 3.9; nnU-Net v2 needs Python
3.10 from 2.6 on, the releases that run on 3.9 (<= 2.5.2) predate its exclusion of torch 2.9, and the engine is
tested on 3.10+ only. Rather than an untested 3.9 path, the module says on load which Slicer it needs
(`environmentProblem`), and CMakeLists.txt refuses to build against an older one.

Versions are ranges, not pins, so that this extension, NNUNet and TotalSegmentator can share one Slicer Python:
- torch >=2.1.2, !=2.9.*: nnU-Net (>= 2.6.4) excludes torch 2.9 (its 3D convolutions fall back to a slow,
  memory-hungry path: pytorch/pytorch#166122, MIC-DKFZ/nnUNet#3002). Asking PyTorchUtils for the same range means
  it never installs a torch that pip then has to refuse; an installed 2.9 is reported with what to do instead.
- nnunetv2 >=2.7,<3: the shipped model was trained with 2.8.1; on 2.7.0 it segments LIDC-IDRI-0001's nodule
  voxel for voxel as on 2.8.1, while 2.6.4 cannot build it (an older build_network_architecture; README).
  TotalSegmentator asks >=2.3.1 (>=2.7 on macOS) and NNUNet any version, so an nnunetv2 >= 2.7 they installed
  is kept as it is.

What users of Slicer AI extensions complain about, and what this does instead:
- a wrong torch build: torch comes through the PyTorch extension's PyTorchUtils (it picks the CUDA build that
  matches the driver); only without that extension a plain pip install is used, and the log says so.
- a replaced SimpleITK (Slicer's own has its IO plugins): every pip call carries a constraints file pinning the
  installed SimpleITK (and torch) version, so pip fails rather than replace them.
- unclear restarts: `needsRestart` is set when a package that is already imported in this session changed.
- a silent CPU fallback: `cudaNote` says when the analysis will run on the CPU and why.

Slicer calls are injected (pipInstall, torchLogicFactory, confirm, progress), so it is tested outside Slicer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from packaging.requirements import Requirement
from packaging.version import Version

from LungNoduleExplainLib.devices import choose_device
from LungNoduleExplainLib.errors import ConfigError
from LungNoduleExplainLib.progress import Progress
from LungNoduleExplainLib.vocabulary import Device

logger = logging.getLogger(__name__)

MINIMUM_SLICER_VERSION = (5, 10)
MINIMUM_PYTHON_VERSION = (3, 10)
TORCH_REQUIREMENT = "torch>=2.1.2,!=2.9.*"
NNUNET_REQUIREMENT = "nnunetv2>=2.7,<3"
# Export to DICOM: the engine's DICOM writer, as pyproject.toml's `dicom` extra asks (its DICOMweb part is not used
# in Slicer). Slicer's own DICOM support ships pydicom (and, in recent builds, highdicom): one in range is kept, an
# older one updated, with a restart asked for when this session had imported it.
DICOM_REQUIREMENTS = ("highdicom>=0.28", "pydicom>=3.0")
REQUIREMENTS = (NNUNET_REQUIREMENT, "numpy>=1.24", "scikit-learn>=1.3", "matplotlib>=3.7", "tqdm>=4.60",
                "safetensors>=0.4", "packaging", *DICOM_REQUIREMENTS)
PINNED_AS_INSTALLED = ("SimpleITK", "torch")  # never replaced by a dependency's requirement
IMPORT_NAMES = {"scikit-learn": "sklearn", "nnunetv2": "nnunetv2", "torch": "torch", "numpy": "numpy"}
# Why a version is refused, where the bare specifier would not say it.
EXCLUSION_REASONS = {
    ("torch", "2.9"): "nnU-Net excludes torch 2.9 (its 3D convolutions are slow and memory-hungry there); "
                      "'Install required packages' replaces it with a later torch through the PyTorch extension "
                      "(or set the version requirement '>=2.10' in the PyTorch Utils module), then restart Slicer",
}


class InstallCancelled(RuntimeError):
    """The user declined the installation."""


def environmentProblem(slicerVersion: Sequence[int] | None,
                       pythonVersion: Sequence[int] = tuple(sys.version_info[:2])) -> str | None:
    """Why this Slicer cannot run the module (shown on load, instead of an install that would fail), or None.
    slicerVersion: (major, minor), e.g. (slicer.app.majorVersion, slicer.app.minorVersion); None outside Slicer."""
    minimum = ".".join(map(str, MINIMUM_SLICER_VERSION))
    if slicerVersion is not None and tuple(slicerVersion[:2]) < MINIMUM_SLICER_VERSION:
        found = ".".join(map(str, slicerVersion[:2]))
        return (f"Lung Nodule Explain needs Slicer {minimum} or later; this is Slicer {found} (Python "
                f"{'.'.join(map(str, pythonVersion[:2]))}). nnU-Net v2 needs Python 3.10 or later, which Slicer "
                f"ships from {minimum} on. Install Slicer {minimum} or later from download.slicer.org.")
    if tuple(pythonVersion[:2]) < MINIMUM_PYTHON_VERSION:
        return (f"Lung Nodule Explain needs Python {'.'.join(map(str, MINIMUM_PYTHON_VERSION))} or later (nnU-Net "
                f"v2), this Python is {'.'.join(map(str, pythonVersion[:2]))}; use Slicer {minimum} or later.")
    return None


def cudaNote(cudaBuilt: bool, cudaAvailable: bool, device: str = Device.AUTO) -> str:
    """What the user should know about where the analysis runs: the worker's rule (devices.choose_device) applied
    ahead of it; '' when it runs on the GPU as asked."""
    if device == Device.CPU:
        return "Device: CPU (as chosen). Each nodule takes seconds to tens of seconds."
    try:
        chosen, _ = choose_device(device, cuda_available=lambda: cudaAvailable)
    except ConfigError:  # the worker will refuse it ("cuda" without a GPU)
        chosen = None
    if chosen not in (None, Device.CPU):
        return ""
    if not cudaBuilt:
        why = ("the installed PyTorch is a CPU-only build; to use an NVIDIA GPU, reinstall PyTorch in the "
               "PyTorch Utils module (it picks the CUDA build for the driver), then restart Slicer")
    else:
        why = "PyTorch has CUDA support but finds no usable NVIDIA GPU or driver"
    action = "the analysis runs on the CPU" if chosen else "Analyze will fail: choose 'auto' or 'cpu'"
    return f"No CUDA GPU: {why}. With device '{device}', {action} (seconds to tens of seconds per nodule)."


@dataclass
class DependencyStatus:
    missing: list[str] = field(default_factory=list)  # requirement strings not installed
    incompatible: list[str] = field(default_factory=list)  # "name installed X, needs SPEC[: why]"

    @property
    def ok(self) -> bool:
        return not self.missing and not self.incompatible

    def describe(self) -> str:
        parts = [f"missing: {', '.join(self.missing)}"] if self.missing else []
        parts += [f"wrong version: {'; '.join(self.incompatible)}"] if self.incompatible else []
        return "; ".join(parts) or "all required packages are installed"


def installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfies(requirement: Requirement, version: str | None) -> bool:
    return version is not None and requirement.specifier.contains(Version(version), prereleases=True)


def _whyRefused(name: str, version: str) -> str:
    release = Version(version).release
    reason = EXCLUSION_REASONS.get((name, ".".join(map(str, release[:2]))))
    return f": {reason}" if reason else ""


def _slicerPipInstall(arguments: str) -> None:
    import slicer
    slicer.util.pip_install(arguments)


def _pyTorchUtilsLogic():
    """PyTorchUtils' logic, or None when the PyTorch extension is not installed."""
    try:
        import PyTorchUtils  # noqa: PLC0415 - only inside Slicer with the PyTorch extension
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()


class InstallLogic:
    def __init__(self, pipInstall: Callable[[str], None] = _slicerPipInstall,
                 versionOf: Callable[[str], str | None] = installedVersion,
                 torchLogicFactory: Callable[[], object | None] = _pyTorchUtilsLogic,
                 confirm: Callable[[str], bool] = lambda message: True,
                 log: Callable[[str], None] = logger.info,
                 progress: Progress = lambda fraction, message: None):
        self.pipInstall, self.versionOf, self.torchLogicFactory = pipInstall, versionOf, torchLogicFactory
        self.confirm, self.log, self.progress = confirm, log, progress
        self.needsRestart = False

    def check(self) -> DependencyStatus:
        status = DependencyStatus()
        for text in (TORCH_REQUIREMENT, *REQUIREMENTS):
            requirement = Requirement(text)
            version = self.versionOf(requirement.name)
            if version is None:
                status.missing.append(text)
            elif not _satisfies(requirement, version):
                status.incompatible.append(f"{requirement.name} installed {version}, needs {requirement.specifier}"
                                           f"{_whyRefused(requirement.name, version)}")
        return status

    def plannedSteps(self) -> list[str]:
        """What install() would do, in order, as the progress bar counts it: 'torch (PyTorch extension)',
        'torch (pip)', 'packages: ...'. Empty when nothing is missing."""
        steps = []
        if self._needsInstall(TORCH_REQUIREMENT):
            steps.append("torch (PyTorch extension)" if self.torchLogicFactory() is not None else "torch (pip)")
        others = [r for r in REQUIREMENTS if self._needsInstall(r)]
        if others:
            steps.append("packages: " + ", ".join(Requirement(r).name for r in others))
        return steps

    def install(self) -> DependencyStatus:
        """Install what check() finds missing; raises InstallCancelled if the user says no. Returns the new
        status (check `needsRestart` afterwards). Reports progress as (fraction done, what is running)."""
        status = self.check()
        if status.ok:
            self.log("All required Python packages are installed.")
            return status
        steps = self.plannedSteps()
        if not self.confirm("LungNoduleExplain needs these Python packages in Slicer "
                            f"({status.describe()}).\nInstall them now? This may take several minutes; "
                            "Slicer's own SimpleITK is kept."):
            raise InstallCancelled("installation of the required Python packages was cancelled")
        before = {name: self.versionOf(name) for name in self._names()}
        done = 0
        if self._needsInstall(TORCH_REQUIREMENT):
            self.progress(done / len(steps), f"Installing PyTorch ({steps[0]}); this can take several minutes")
            self._installTorch()
            done += 1
        others = [r for r in REQUIREMENTS if self._needsInstall(r)]
        if others:
            self.progress(done / len(steps), f"Installing {', '.join(Requirement(r).name for r in others)}")
            self.log(f"Installing {', '.join(others)} (keeping {', '.join(PINNED_AS_INSTALLED)} as installed)")
            with self._constraintsFile() as constraints:  # written after torch's install, so it pins that torch
                self.pipInstall(" ".join(f'"{r}"' for r in others) + f' -c "{constraints}"')
        changed = [n for n in self._names() if self.versionOf(n) != before[n] and before[n] is not None]
        if any(IMPORT_NAMES.get(n, n.replace("-", "_")) in sys.modules for n in changed):
            self.needsRestart = True
            self.log(f"Restart Slicer to use the updated packages: {', '.join(changed)}")
        status = self.check()
        self.progress(1.0, "Installed; restart Slicer to use them" if self.needsRestart else
                      ("Installed" if status.ok else f"Still {status.describe()}"))
        return status

    @staticmethod
    def _names() -> list[str]:
        return [Requirement(r).name for r in (TORCH_REQUIREMENT, *REQUIREMENTS)]

    def _needsInstall(self, text: str) -> bool:
        requirement = Requirement(text)
        return not _satisfies(requirement, self.versionOf(requirement.name))

    def _installTorch(self) -> None:
        torchLogic = self.torchLogicFactory()
        specifier = str(Requirement(TORCH_REQUIREMENT).specifier)
        if torchLogic is not None:
            self.log(f"Installing PyTorch ({specifier}) through the PyTorch extension, which picks the CUDA build")
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=specifier) is None:
                raise RuntimeError("the PyTorch extension could not install PyTorch; see its log")
        else:
            self.log("The PyTorch extension is not installed: installing PyTorch with pip (it may be a CPU-only "
                     "build; install the PyTorch extension from the Extensions Manager to get the CUDA build)")
            with self._constraintsFile(exclude=("torch",)) as constraints:
                self.pipInstall(f'"{TORCH_REQUIREMENT}" -c "{constraints}"')

    @contextlib.contextmanager
    def _constraintsFile(self, exclude: tuple[str, ...] = ()) -> Iterator[Path]:
        """A pip constraints file pinning PINNED_AS_INSTALLED (less `exclude`) at their installed versions; it
        and its temporary folder are deleted when the `with` block ends."""
        lines = [f"{name}=={version}" for name in PINNED_AS_INSTALLED
                 if name not in exclude and (version := self.versionOf(name)) is not None]
        with tempfile.TemporaryDirectory(prefix="LungNoduleExplain-install-") as folder:
            path = Path(folder) / "constraints.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            yield path
