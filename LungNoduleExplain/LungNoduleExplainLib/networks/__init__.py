"""Networks by name: the HESAM ablation variants and the 3D baselines.

Every network takes (image [B, 1, D, H, W], prior [B, 1, D, H, W] or None) and returns logits [B, n_outputs]
with the diagnosis first, and has `activation_maps(image, prior) -> (logits, maps [B, n_outputs, D, H, W])`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from torch import nn

from ..errors import ConfigError
from .baselines import DenseNet3D, ResNet3D, VGG3D
from .hesam import HESAM

# name -> (prior mode or None for baselines, multitask?) ; the paper's ablation order first.
VARIANTS: dict[str, str] = {
    "hesam": "HESAM alone: single task (diagnosis only), no prior",
    "hesam-mt": "HESAM + multitask",
    "hesam-mt-cbam": "HESAM + multitask + CBAM spatial gates fed by the prior",
    "hesam-mt-aag": "HESAM + multitask + anatomical attention gates (the paper's full model)",
    "vgg": "3D VGG baseline (image only)",
    "resnet": "3D ResNet baseline (image only)",
    "densenet": "3D DenseNet baseline (image only)",
}
DEFAULT_VARIANT = "hesam-mt-aag"
# Width that trains on 2 CPU cores in reasonable time; the authors use (64, 128, 256, 512).
DEFAULT_FEATURES: tuple[int, int, int, int] = (8, 16, 32, 64)
AUTHORS_FEATURES: tuple[int, int, int, int] = (64, 128, 256, 512)


@dataclass
class NetworkConfig:
    """What `build_network` needs; saved in every bundle and run."""

    variant: str = DEFAULT_VARIANT
    features: tuple[int, ...] = DEFAULT_FEATURES
    aag_mode: str = "sum"
    stem_stride: int = 2
    # Image channels the network takes (see patch.INPUT_CHANNELS); the authors use the percentile image only.
    inputs: tuple[str, ...] = ("percentile",)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown network variant {self.variant!r}; expected one of {list(VARIANTS)}")
        self.features = tuple(int(f) for f in self.features)
        from ..patch import INPUT_CHANNELS
        self.inputs = tuple(self.inputs)
        unknown = [c for c in self.inputs if c not in INPUT_CHANNELS]
        if unknown or not self.inputs:
            raise ConfigError(f"network inputs {list(self.inputs)}: expected a non-empty subset of {INPUT_CHANNELS}")

    @property
    def input_indices(self) -> list[int]:
        from ..patch import INPUT_CHANNELS
        return [INPUT_CHANNELS.index(c) for c in self.inputs]

    @property
    def multitask(self) -> bool:
        return self.variant != "hesam"

    @property
    def uses_prior(self) -> bool:
        return self.variant in ("hesam-mt-cbam", "hesam-mt-aag")

    def to_dict(self) -> dict:
        return asdict(self)


def build_network(config: NetworkConfig, n_manifestations: int) -> nn.Module:
    """The network named by `config.variant` with 1 + K outputs (1 only for the single-task "hesam")."""
    v = config.variant
    if v.startswith("hesam"):
        prior_mode = {"hesam-mt-cbam": "cbam", "hesam-mt-aag": "aag"}.get(v, "none")
        return HESAM(n_manifestations if config.multitask else 0, config.features, prior_mode, config.aag_mode,
                     stem_stride=config.stem_stride, in_channels=len(config.inputs))
    c = len(config.inputs)
    n_outputs = 1 + n_manifestations
    if v == "vgg":
        return VGG3D(n_outputs, config.features, config.stem_stride, in_channels=c)
    if v == "resnet":
        return ResNet3D(n_outputs, config.features, config.stem_stride, in_channels=c)
    return DenseNet3D(n_outputs, growth=max(4, config.features[0]), stem_channels=2 * config.features[0],
                      stem_stride=config.stem_stride, in_channels=c)


__all__ = ["HESAM", "VGG3D", "ResNet3D", "DenseNet3D", "NetworkConfig", "build_network", "VARIANTS",
           "DEFAULT_VARIANT", "DEFAULT_FEATURES", "AUTHORS_FEATURES"]
