"""What a training run is, without torch: `RunSpec` (data, run folder, tasks, prior, validation share, members) and
`TrainConfig` (hyper-parameters); the one source of their defaults (the CLI's `train` flags, the Slicer CLI module
and the benchmarks read them from here)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .network_config import NetworkConfig
from .vocabulary import Device, Prior


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (saved beside its outputs). Defaults follow METHOD.md, except
    `max_epochs`/`phase1_epochs` which are CPU-sized (the authors train up to 500 epochs)."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    max_epochs: int = 60
    phase1_epochs: int = 10
    batch_size: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    plateau_patience: int = 15
    early_stop_patience: int = 30
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.network, dict):
            self.network = NetworkConfig(**self.network)
        for name in ("max_epochs", "batch_size", "plateau_patience", "early_stop_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.phase1_epochs < self.max_epochs:
            raise ConfigError(f"training config: phase1_epochs must be in [0, max_epochs), got {self.phase1_epochs}")
        if self.lr <= 0:
            raise ConfigError(f"training config: lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["network"] = self.network.to_dict()
        return data


@dataclass
class RunSpec:
    """What to train on and where: the data folder, task set, prior, validation share, the run folder, how
    many networks to train as an ensemble, and which patients of the data to leave out of the run altogether
    (`exclude_patients`: neither trained nor validated on, e.g. a cross-validation's test fold)."""

    data: Path
    run_dir: Path
    tasks: str = "lidc"
    prior: str = Prior.REFERENCE_MASK.value
    val_fraction: float = 0.2
    device: str = Device.AUTO.value
    name: str = "lungnodule-explain"
    members: int = 1
    exclude_patients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.data, self.run_dir = Path(self.data), Path(self.run_dir)
        self.exclude_patients = tuple(sorted(set(map(str, self.exclude_patients))))
        if not 1 <= self.members <= 10:
            raise ConfigError(f"members must be between 1 and 10, got {self.members}")
        if self.val_fraction == 0 and self.members < 2:
            raise ConfigError("val_fraction 0 (no validation patients) needs members >= 2: the members' patient "
                              "folds are then where epochs are picked and the figures come from")
        if self.val_fraction != 0 and not 0.05 <= self.val_fraction <= 0.5:
            raise ConfigError(f"val_fraction must be 0 or in [0.05, 0.5], got {self.val_fraction}")
        if self.prior != Prior.REFERENCE_MASK and not Path(self.prior).is_dir():
            raise ConfigError(f"prior must be '{Prior.REFERENCE_MASK}' or a folder of probability maps; "
                              f"{self.prior} is not a folder")

    def to_dict(self) -> dict:
        # an empty exclusion is not written: a run begun before the field existed still matches on --resume
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()
                if not (k == "exclude_patients" and not v)}


def default(name: str, of: type = TrainConfig) -> object:
    """The default of field `name` of TrainConfig (or RunSpec), without building one."""
    found = {f.name: f for f in fields(of)}[name]
    return found.default if found.default is not MISSING else found.default_factory()  # type: ignore[misc]
