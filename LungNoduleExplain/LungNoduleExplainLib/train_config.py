"""Training hyper-parameters without torch: the one source of their defaults (the CLI's `train` flags, the Slicer
CLI module and the benchmarks read them from here)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import ConfigError
from .network_config import NetworkConfig


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


def default(name: str) -> object:
    """TrainConfig's default of field `name` (without building a config)."""
    found = {f.name: f for f in fields(TrainConfig)}[name]
    return found.default if found.default is not MISSING else found.default_factory()  # type: ignore[misc]
