"""Small 3D building blocks shared by the HESAM network and the baselines.

Tensors are [B, C, D, H, W] with D = z (32 in the patch), H = y, W = x (64 each).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ConvBnRelu(nn.Sequential):
    """Conv3d(kernel, stride) -> BatchNorm3d -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class TwoConv(nn.Sequential):
    """Two 3x3x3 conv-BN-ReLU layers (the U-Net's basic unit)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBnRelu(in_channels, out_channels), ConvBnRelu(out_channels, out_channels))


class Down(nn.Sequential):
    """Max-pool by 2, then TwoConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool3d(2), TwoConv(in_channels, out_channels))


class UpCat(nn.Module):
    """Upsample by 2 (transposed conv), concatenate the skip connection, TwoConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = TwoConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class ResidualUnit(nn.Module):
    """Two conv-BN-ReLU layers (the first strided) plus a 1x1x1 (strided) shortcut, as MONAI's ResidualUnit."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBnRelu(in_channels, out_channels, stride=stride),
                                  nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm3d(out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x) + self.shortcut(x))


class AnatomicalAttentionGate(nn.Module):
    """AAG (METHOD.md): y = G1 * x_img + G2 * x_roi with G_i = sigmoid(Conv1x1([x_img; x_roi])).

    mode "sum" (default), "weighted" (the G2 term times a learnable scalar initialised to 0.5) or
    "cat" (ReLU(BN(Conv1x1([G1 * x_img; G2 * x_roi])))).
    """

    MODES = ("sum", "weighted", "cat")

    def __init__(self, channels: int, mode: str = "sum") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"AAG mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.gate_image = nn.Conv3d(2 * channels, channels, 1)
        self.gate_roi = nn.Conv3d(2 * channels, channels, 1)
        if mode == "weighted":
            self.roi_weight = nn.Parameter(torch.tensor(0.5))
        if mode == "cat":
            self.fuse = nn.Sequential(nn.Conv3d(2 * channels, channels, 1, bias=False), nn.BatchNorm3d(channels),
                                      nn.ReLU(inplace=True))

    def gates(self, x_image: Tensor, x_roi: Tensor) -> tuple[Tensor, Tensor]:
        both = torch.cat([x_image, x_roi], dim=1)
        return torch.sigmoid(self.gate_image(both)), torch.sigmoid(self.gate_roi(both))

    def forward(self, x_image: Tensor, x_roi: Tensor) -> Tensor:
        g1, g2 = self.gates(x_image, x_roi)
        if self.mode == "cat":
            return self.fuse(torch.cat([g1 * x_image, g2 * x_roi], dim=1))
        roi_term = g2 * x_roi
        if self.mode == "weighted":
            roi_term = self.roi_weight * roi_term
        return g1 * x_image + roi_term


class SpatialAttentionCBAM(nn.Module):
    """The CBAM ablation's spatial gate: x * sigmoid(Conv7([channel-mean(x); mask resized to x]))."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:
        prior = F.interpolate(prior, size=x.shape[2:], mode="trilinear", align_corners=False)
        gate = torch.sigmoid(self.conv(torch.cat([x.mean(dim=1, keepdim=True), prior], dim=1)))
        return x * gate


class SoftActivationMapping(nn.Module):
    """SAM: AdaptiveAvgPool3d(6) -> [B, C, 216] -> per-channel spatial linear layer -> [B, C].

    Each channel c has its own weight vector over the 6x6x6 pooled positions (weight [C, 216], bias [C]), so the
    network learns where in space each feature matters instead of averaging it away (as GAP would).
    """

    def __init__(self, channels: int, grid: int = 6) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(grid)
        self.weight = nn.Parameter(torch.empty(channels, grid ** 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight, mean=1.0 / grid ** 3, std=0.01)  # starts close to average pooling

    def forward(self, features: Tensor) -> Tensor:
        pooled = self.pool(features).flatten(2)  # [B, C, 216]
        return (pooled * self.weight).sum(dim=-1) + self.bias
