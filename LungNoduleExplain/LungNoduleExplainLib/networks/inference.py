"""Batch inference of a classifier on a PatchSet: what evaluation, training's validation and the benchmarks call."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.patches import PatchSet


@torch.inference_mode()
def predict(model: nn.Module, patches: PatchSet, device: torch.device, inputs: Sequence[str],
            batch_size: int = 20) -> np.ndarray:
    """Sigmoid probabilities [N, n_outputs] of `model` on every patch (no augmentation); `inputs` are the image
    channels the network takes, by name (NetworkConfig.inputs)."""
    model.eval()
    channels = patches.channel_indices(inputs)
    out = []
    for start in range(0, len(patches), batch_size):
        image = torch.from_numpy(patches.images[start:start + batch_size, channels].astype(np.float32))
        prior = torch.from_numpy(patches.priors[start:start + batch_size].astype(np.float32))[:, None]
        image, prior = (t.to(device).contiguous(memory_format=torch.channels_last_3d) for t in (image, prior))
        descriptors = torch.from_numpy(patches.descriptors[start:start + batch_size]).to(device)
        out.append(torch.sigmoid(model(image, prior, descriptors)).float().cpu().numpy())
    return np.concatenate(out)
