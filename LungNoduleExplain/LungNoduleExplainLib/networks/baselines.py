"""3D baselines of the paper's comparison: VGG, ResNet and DenseNet, image only.

Like HESAM, `stem_stride=2` halves the first feature maps (the CPU default). DenseNet also max-pools after its stem,
as DenseNets do. Each ends in global average pooling and one linear layer over all 1 + K outputs, so class activation maps
(CAM: ReLU(sum_c W[k, c] F[c])) come for free and every model answers the same interface as HESAM.
forward(image [B, 1, D, H, W], prior=None) -> logits [B, 1 + K]; the prior is not used by these baselines.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .blocks import ConvBnRelu, ResidualUnit


class _CAMClassifier(nn.Module):
    """Shared tail: features -> GAP -> Linear; CAM maps from the same weights."""

    def __init__(self, body: nn.Module, channels: int, n_outputs: int) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(channels, n_outputs)

    def forward(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None) -> Tensor:
        return self.fc(self.body(image).mean(dim=(2, 3, 4)))

    def activation_maps(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
        fmap = self.body(image)
        logits = self.fc(fmap.mean(dim=(2, 3, 4)))
        cam = F.relu(torch.einsum("kc,bcdhw->bkdhw", self.fc.weight, fmap))
        cam = F.interpolate(cam, size=image.shape[2:], mode="trilinear", align_corners=False)
        flat = cam.flatten(2)
        lo, hi = flat.min(-1, keepdim=True)[0], flat.max(-1, keepdim=True)[0]
        return logits, ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(cam)


class VGG3D(_CAMClassifier):
    """Four stages of two 3x3x3 conv-BN-ReLU, max-pooling between stages."""

    def __init__(self, n_outputs: int, features: Sequence[int] = (16, 32, 64, 128), stem_stride: int = 1,
                 in_channels: int = 1) -> None:
        layers: list[nn.Module] = []
        in_ch = in_channels
        for i, ch in enumerate(features):
            if i:
                layers.append(nn.MaxPool3d(2))
            layers += [ConvBnRelu(in_ch, ch, stride=stem_stride if i == 0 else 1), ConvBnRelu(ch, ch)]
            in_ch = ch
        super().__init__(nn.Sequential(*layers), in_ch, n_outputs)


class ResNet3D(_CAMClassifier):
    """A ResNet-10-like network: stem conv, then one residual unit per stage, strided from the second on."""

    def __init__(self, n_outputs: int, features: Sequence[int] = (16, 32, 64, 128), stem_stride: int = 1,
                 in_channels: int = 1) -> None:
        layers: list[nn.Module] = [ConvBnRelu(in_channels, features[0], stride=stem_stride)]
        in_ch = features[0]
        for i, ch in enumerate(features):
            layers.append(ResidualUnit(in_ch, ch, stride=1 if i == 0 else 2))
            in_ch = ch
        super().__init__(nn.Sequential(*layers), in_ch, n_outputs)


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.BatchNorm3d(in_channels), nn.ReLU(inplace=True),
                                  nn.Conv3d(in_channels, growth, 3, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class DenseNet3D(_CAMClassifier):
    """A small DenseNet: dense blocks (growth g, `layers` each) joined by 1x1 conv + avg-pool transitions."""

    def __init__(self, n_outputs: int, growth: int = 8, layers: Sequence[int] = (3, 3, 3),
                 stem_channels: int = 16, stem_stride: int = 1, in_channels: int = 1) -> None:
        modules: list[nn.Module] = [ConvBnRelu(in_channels, stem_channels, stride=stem_stride), nn.MaxPool3d(2)]
        ch = stem_channels
        for i, n in enumerate(layers):
            for _ in range(n):
                modules.append(_DenseLayer(ch, growth))
                ch += growth
            if i < len(layers) - 1:
                modules += [nn.BatchNorm3d(ch), nn.ReLU(inplace=True), nn.Conv3d(ch, ch // 2, 1, bias=False),
                            nn.AvgPool3d(2)]
                ch //= 2
        modules += [nn.BatchNorm3d(ch), nn.ReLU(inplace=True)]
        super().__init__(nn.Sequential(*modules), ch, n_outputs)
