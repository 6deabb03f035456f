"""Networks by name: the HESAM ablation variants and the 3D baselines.

Every network takes (image [B, C, D, H, W], prior [B, 1, D, H, W] or None, descriptors [B, n] or None) and returns
logits [B, n_outputs] with the diagnosis first, and has `activation_maps(image, prior, descriptors) -> (logits,
maps [B, n_outputs, D, H, W])`. Only HESAM with the descriptors option uses the descriptors. An `Ensemble` of
several networks of one configuration behaves as one network.
"""

from __future__ import annotations

from torch import nn

from ..network_config import (AUTHORS_FEATURES, DEFAULT_FEATURES, DEFAULT_VARIANT, VARIANTS,  # noqa: F401
                              NetworkConfig)
from .baselines import DenseNet3D, ResNet3D, VGG3D
from .ensemble import Ensemble
from .hesam import HESAM


def build_network(config: NetworkConfig, n_manifestations: int, members: int = 1) -> nn.Module:
    """The network named by `config.variant` with 1 + K outputs (1 only for the single-task "hesam"); with
    `members` > 1, an Ensemble of that many."""
    if members > 1:
        return Ensemble([build_network(config, n_manifestations) for _ in range(members)])
    v = config.variant
    if v.startswith("hesam"):
        prior_mode = {"hesam-mt-cbam": "cbam", "hesam-mt-aag": "aag"}.get(v, "none")
        return HESAM(n_manifestations if config.multitask else 0, config.features, prior_mode, config.aag_mode,
                     stem_stride=config.stem_stride, in_channels=len(config.inputs),
                     n_descriptors=config.n_descriptors)
    c = len(config.inputs)
    n_outputs = 1 + n_manifestations
    if v == "vgg":
        return VGG3D(n_outputs, config.features, config.stem_stride, in_channels=c)
    if v == "resnet":
        return ResNet3D(n_outputs, config.features, config.stem_stride, in_channels=c)
    return DenseNet3D(n_outputs, growth=max(4, config.features[0]), stem_channels=2 * config.features[0],
                      stem_stride=config.stem_stride, in_channels=c)


__all__ = ["HESAM", "Ensemble", "VGG3D", "ResNet3D", "DenseNet3D", "NetworkConfig", "build_network", "VARIANTS",
           "DEFAULT_VARIANT", "DEFAULT_FEATURES", "AUTHORS_FEATURES"]
