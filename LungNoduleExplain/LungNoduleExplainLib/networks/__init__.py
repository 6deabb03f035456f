"""Networks by name: the HESAM ablation variants and the 3D baselines.

Every network takes (image [B, C, D, H, W], prior [B, 1, D, H, W] or None, descriptors [B, n] or None) and returns
logits [B, n_outputs] with the diagnosis first, and has `activation_maps(image, prior, descriptors) -> (logits,
maps [B, n_outputs, D, H, W])`. Only HESAM with the descriptors option uses the descriptors. An `Ensemble` of
several networks of one configuration behaves as one network.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..network_config import (AUTHORS_FEATURES, DEFAULT_FEATURES, DEFAULT_VARIANT, VARIANTS,  # noqa: F401
                              NetworkConfig)
from .baselines import DenseNet3D, ResNet3D, VGG3D
from .ensemble import Ensemble
from .hesam import HESAM
from .inference import predict


def _hesam(config: NetworkConfig, n_manifestations: int) -> nn.Module:
    return HESAM(n_manifestations if config.multitask else 0, config.features, config.spec.prior_mode,
                 config.aag_mode, stem_stride=config.stem_stride, in_channels=len(config.inputs),
                 n_descriptors=config.n_descriptors)


def _vgg(config: NetworkConfig, n_manifestations: int) -> nn.Module:
    return VGG3D(1 + n_manifestations, config.features, config.stem_stride, in_channels=len(config.inputs))


def _resnet(config: NetworkConfig, n_manifestations: int) -> nn.Module:
    return ResNet3D(1 + n_manifestations, config.features, config.stem_stride, in_channels=len(config.inputs))


def _densenet(config: NetworkConfig, n_manifestations: int) -> nn.Module:
    return DenseNet3D(1 + n_manifestations, growth=max(4, config.features[0]), stem_channels=2 * config.features[0],
                      stem_stride=config.stem_stride, in_channels=len(config.inputs))


# Variant.family -> builder (network_config.VARIANTS names the variants and their family)
BUILDERS: dict[str, Callable[[NetworkConfig, int], nn.Module]] = {
    "hesam": _hesam, "vgg": _vgg, "resnet": _resnet, "densenet": _densenet}


def build_network(config: NetworkConfig, n_manifestations: int, members: int = 1) -> nn.Module:
    """The network named by `config.variant` with 1 + K outputs (1 only for a single-task variant); with
    `members` > 1, an Ensemble of that many."""
    if members > 1:
        return Ensemble([build_network(config, n_manifestations) for _ in range(members)])
    return BUILDERS[config.spec.family](config, n_manifestations)


__all__ = ["HESAM", "Ensemble", "VGG3D", "ResNet3D", "DenseNet3D", "NetworkConfig", "build_network", "predict",
           "BUILDERS", "VARIANTS",
           "DEFAULT_VARIANT", "DEFAULT_FEATURES", "AUTHORS_FEATURES"]
