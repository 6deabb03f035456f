"""First use: check the engine's Python packages in Slicer's Python and install what is missing, once asked.

What users of Slicer AI extensions complain about, and what this does instead:
- a wrong torch build: torch comes through the PyTorch extension's PyTorchUtils (it picks the CUDA build that
  matches the driver); only without that extension a plain pip install is used, and the log says so.
- a replaced SimpleITK (Slicer's own has its IO plugins): every pip call carries a constraints file pinning the
  installed SimpleITK (and torch) version, so pip fails rather than replace them.
- unclear restarts: `needsRestart` is set when a package that is already imported in this session changed.

Slicer calls are injected (pipInstall, torchLogicFactory, confirm), so it is tested outside Slicer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from packaging.requirements import Requirement
from packaging.version import Version

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = "torch>=2.1"
REQUIREMENTS = ("nnunetv2==2.8.1", "numpy>=1.24", "scikit-learn>=1.3", "matplotlib>=3.7", "tqdm>=4.60",
                "safetensors>=0.4", "packaging")
PINNED_AS_INSTALLED = ("SimpleITK", "torch")  # never replaced by a dependency's requirement
IMPORT_NAMES = {"scikit-learn": "sklearn", "nnunetv2": "nnunetv2", "torch": "torch", "numpy": "numpy"}


class InstallCancelled(RuntimeError):
    """The user declined the installation."""


@dataclass
class DependencyStatus:
    missing: list[str] = field(default_factory=list)  # requirement strings not installed
    incompatible: list[str] = field(default_factory=list)  # "name installed X, needs SPEC"

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
                 log: Callable[[str], None] = logger.info):
        self.pipInstall, self.versionOf, self.torchLogicFactory = pipInstall, versionOf, torchLogicFactory
        self.confirm, self.log = confirm, log
        self.needsRestart = False

    def check(self) -> DependencyStatus:
        status = DependencyStatus()
        for text in (TORCH_REQUIREMENT, *REQUIREMENTS):
            requirement = Requirement(text)
            version = self.versionOf(requirement.name)
            if version is None:
                status.missing.append(text)
            elif not _satisfies(requirement, version):
                status.incompatible.append(f"{requirement.name} installed {version}, needs {requirement.specifier}")
        return status

    def install(self) -> DependencyStatus:
        """Install what check() finds missing; raises InstallCancelled if the user says no. Returns the new
        status (check `needsRestart` afterwards)."""
        status = self.check()
        if status.ok:
            self.log("All required Python packages are installed.")
            return status
        if not self.confirm("LungNoduleExplain needs these Python packages in Slicer "
                            f"({status.describe()}).\nInstall them now? This may take several minutes; "
                            "Slicer's own SimpleITK is kept."):
            raise InstallCancelled("installation of the required Python packages was cancelled")
        before = {name: self.versionOf(name) for name in self._names()}
        self._installTorch()
        others = [r for r in REQUIREMENTS if self._needsInstall(r)]
        if others:
            self.log(f"Installing {', '.join(others)} (keeping {', '.join(PINNED_AS_INSTALLED)} as installed)")
            with self._constraintsFile() as constraints:  # written after torch's install, so it pins that torch
                self.pipInstall(" ".join(f'"{r}"' for r in others) + f' -c "{constraints}"')
        changed = [n for n in self._names() if self.versionOf(n) != before[n] and before[n] is not None]
        if any(IMPORT_NAMES.get(n, n.replace("-", "_")) in sys.modules for n in changed):
            self.needsRestart = True
            self.log(f"Restart Slicer to use the updated packages: {', '.join(changed)}")
        return self.check()

    @staticmethod
    def _names() -> list[str]:
        return [Requirement(r).name for r in (TORCH_REQUIREMENT, *REQUIREMENTS)]

    def _needsInstall(self, text: str) -> bool:
        requirement = Requirement(text)
        return not _satisfies(requirement, self.versionOf(requirement.name))

    def _installTorch(self) -> None:
        if not self._needsInstall(TORCH_REQUIREMENT):
            return
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
