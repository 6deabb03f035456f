"""3D HESAM: a U-Net-like backbone with anatomical attention gates and soft-activation-mapping heads.

METHOD.md: TwoConv -> 3 x Down -> 3 x UpCat -> 1x1x1 conv; a probability-map branch meets the image features in an
AAG after each Down; a diagnosis head and a manifestation head, each ResidualUnit(stride 2) -> ResidualUnit ->
features F [B, C, D/2, H/2, W/2] -> SAM; HESAM adds the global-max-pooled deepest encoder features to the SAM
vector; a linear layer gives the logits. Visual map of output k: ReLU(sum_c W_fc[k, c] * F[c]), upsampled and
min-max normalised to [0, 1].

Our addition (off unless asked for, see descriptors.py): with n_descriptors > 0 each head adds a linear term of the
standardised nodule descriptors (shape and HU of the prior region) to its logits. The term is global, so the
activation maps still show where the image features of each output lie.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .blocks import (AnatomicalAttentionGate, ConvBnRelu, Down, ResidualUnit, SoftActivationMapping,
                     SpatialAttentionCBAM, UpCat)

PRIOR_MODES = ("none", "aag", "cbam")


class SAMHead(nn.Module):
    """ResidualUnit(stride 2) -> ResidualUnit -> SAM (+ GMP of the deepest features) -> Linear(C, n_outputs)."""

    def __init__(self, in_channels: int, channels: int, deep_channels: int, n_outputs: int,
                 n_descriptors: int = 0) -> None:
        super().__init__()
        self.features = nn.Sequential(ResidualUnit(in_channels, channels, stride=2),
                                      ResidualUnit(channels, channels, stride=1))
        self.sam = SoftActivationMapping(channels)
        # The paper adds GMP(deepest features) to the SAM vector; when widths differ we project it (1x1x1 conv).
        self.deep_projection: nn.Module = (nn.Identity() if deep_channels == channels
                                           else nn.Conv3d(deep_channels, channels, 1, bias=False))
        self.fc = nn.Linear(channels, n_outputs)
        self.descriptor_fc = nn.Linear(n_descriptors, n_outputs, bias=False) if n_descriptors else None

    def forward(self, x: Tensor, deep: Tensor, descriptors: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns (logits [B, n_outputs], feature map F [B, C, d, h, w]); descriptors are standardised."""
        fmap = self.features(x)
        gmp = torch.amax(self.deep_projection(deep), dim=(2, 3, 4))
        logits = self.fc(self.sam(fmap) + gmp)
        if self.descriptor_fc is not None:
            logits = logits + self.descriptor_fc(descriptors)
        return logits, fmap

    def activation_maps(self, fmap: Tensor, size: Sequence[int]) -> Tensor:
        """[B, n_outputs, *size] in [0, 1]: ReLU(sum_c W_fc[k, c] F[c]), trilinear upsampling, min-max per map."""
        cam = F.relu(torch.einsum("kc,bcdhw->bkdhw", self.fc.weight, fmap))
        cam = F.interpolate(cam, size=tuple(size), mode="trilinear", align_corners=False)
        flat = cam.flatten(2)
        lo, hi = flat.min(dim=-1, keepdim=True)[0], flat.max(dim=-1, keepdim=True)[0]
        return ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(cam)


class HESAM(nn.Module):
    """The paper's classifier and its ablations.

    Args:
        n_manifestations: K; 0 gives the single-task network (diagnosis head only).
        features: encoder widths of the four levels; the authors use (64, 128, 256, 512).
        prior_mode: "aag" (anatomical attention gates on the prior), "cbam" (CBAM spatial gates fed by the prior)
            or "none" (image only).
        aag_mode: "sum", "weighted" or "cat" (see AnatomicalAttentionGate).
        head_channels: C of the head feature maps; default features[1].
        stem_stride: 1 as the authors (full-resolution stem); 2 halves every feature map, about 8x less compute,
            which is what lets the network train on 2 CPU cores. Maps are still upsampled to the patch size.

        in_channels: image channels (1 as the authors; 2 with the HU-window channel).
        n_descriptors: how many nodule descriptors it reads, the first n of descriptors.DESCRIPTOR_NAMES (0: the
            authors' network, image and prior only). Their standardisation (training mean and std) lives in
            buffers, so it travels with the weights.

    forward(image [B, C, D, H, W], prior [B, 1, D, H, W], descriptors [B, >= n_descriptors]) -> logits [B, 1 + K]
    (diagnosis first).
    """

    def __init__(self, n_manifestations: int, features: Sequence[int] = (64, 128, 256, 512),
                 prior_mode: str = "aag", aag_mode: str = "sum", head_channels: int | None = None,
                 stem_stride: int = 1, in_channels: int = 1, n_descriptors: int = 0) -> None:
        super().__init__()
        if len(features) != 4:
            raise ValueError(f"features must give 4 widths, got {tuple(features)}")
        if prior_mode not in PRIOR_MODES:
            raise ValueError(f"prior_mode must be one of {PRIOR_MODES}, got {prior_mode!r}")
        f0, f1, f2, f3 = features
        self.prior_mode = prior_mode
        self.n_manifestations = n_manifestations
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.stem = nn.Sequential(ConvBnRelu(in_channels, f0, stride=stem_stride), ConvBnRelu(f0, f0))
        self.downs = nn.ModuleList([Down(f0, f1), Down(f1, f2), Down(f2, f3)])
        if prior_mode == "aag":
            # The anatomical branch: conv-BN-ReLU + max-pool per level, meeting the image after each Down.
            self.roi_stem = ConvBnRelu(1, f0, stride=stem_stride)
            self.roi_downs = nn.ModuleList([nn.Sequential(ConvBnRelu(a, b), nn.MaxPool3d(2))
                                            for a, b in ((f0, f1), (f1, f2), (f2, f3))])
            self.gates = nn.ModuleList([AnatomicalAttentionGate(c, aag_mode) for c in (f1, f2, f3)])
        elif prior_mode == "cbam":
            self.gates = nn.ModuleList([SpatialAttentionCBAM() for _ in range(3)])
        self.ups = nn.ModuleList([UpCat(f3, f2, f2), UpCat(f2, f1, f1), UpCat(f1, f0, f0)])
        self.decoder_out = ConvBnRelu(f0, f0, kernel_size=1)
        channels = head_channels or f1
        self.n_descriptors = n_descriptors
        if n_descriptors:
            self.register_buffer("descriptor_mean", torch.zeros(n_descriptors))
            self.register_buffer("descriptor_std", torch.ones(n_descriptors))
        self.diagnosis_head = SAMHead(f0, channels, f3, 1, n_descriptors)
        self.manifestation_head = (SAMHead(f0, channels, f3, n_manifestations, n_descriptors)
                                   if n_manifestations > 0 else None)

    def set_descriptor_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Standardise descriptors with the training set's mean and std (constant ones get std 1); given for every
        descriptor, the network keeps its first n_descriptors (descriptors.py: a set is a prefix)."""
        mean, std = mean[..., :self.n_descriptors], std[..., :self.n_descriptors]
        self.descriptor_mean.copy_(mean)
        self.descriptor_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def _standardised(self, descriptors: Tensor | None) -> Tensor | None:
        """descriptors [B, >= n_descriptors] in descriptors.DESCRIPTOR_NAMES order; the first n_descriptors are used."""
        if not self.n_descriptors:
            return None
        if descriptors is None or descriptors.shape[-1] < self.n_descriptors:
            got = None if descriptors is None else tuple(descriptors.shape)
            raise ValueError(f"this network needs nodule descriptors [B, {self.n_descriptors}], got {got}")
        return (descriptors[..., :self.n_descriptors] - self.descriptor_mean) / self.descriptor_std

    def _backbone(self, image: Tensor, prior: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.prior_mode != "none" and prior is None:
            raise ValueError(f"prior_mode {self.prior_mode!r} needs a prior map")
        x = self.stem(image)
        skips = [x]
        roi = self.roi_stem(prior) if self.prior_mode == "aag" else None
        for level, down in enumerate(self.downs):
            x = down(x)
            if self.prior_mode == "aag":
                roi = self.roi_downs[level](roi)
                x = self.gates[level](x, roi)
            elif self.prior_mode == "cbam":
                x = self.gates[level](x, prior)
            skips.append(x)
        deep = x
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            x = up(x, skip)
        return self.decoder_out(x), deep

    def forward_with_features(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None
                              ) -> tuple[Tensor, list[tuple[SAMHead, Tensor]]]:
        """Logits [B, 1 + K] and, per head, (head, its feature map) for activation maps."""
        x, deep = self._backbone(image, prior)
        descriptors = self._standardised(descriptors)
        logits, fmap = self.diagnosis_head(x, deep, descriptors)
        heads = [(self.diagnosis_head, fmap)]
        if self.manifestation_head is not None:
            m_logits, m_fmap = self.manifestation_head(x, deep, descriptors)
            logits = torch.cat([logits, m_logits], dim=1)
            heads.append((self.manifestation_head, m_fmap))
        return logits, heads

    def forward(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None) -> Tensor:
        return self.forward_with_features(image, prior, descriptors)[0]

    def activation_maps(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
        """(logits [B, 1 + K], maps [B, 1 + K, D, H, W] in [0, 1]) for every output, diagnosis first."""
        logits, heads = self.forward_with_features(image, prior, descriptors)
        maps = torch.cat([head.activation_maps(fmap, image.shape[2:]) for head, fmap in heads], dim=1)
        return logits, maps

    def head_parameters(self, which: str) -> list[nn.Parameter]:
        head = self.diagnosis_head if which == "diagnosis" else self.manifestation_head
        return [] if head is None else list(head.parameters())
