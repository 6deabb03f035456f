"""Which torch device to run on (one rule for training, evaluation, analysis and segmentation), and running fast on
it."""

from __future__ import annotations

import functools

from .errors import ConfigError


def resolve_device(device: str | None = "auto"):  # -> torch.device; torch is imported lazily
    """"auto" or None -> CUDA when available, else CPU; "cpu"; "cuda[:N]" (ConfigError without a GPU)."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; expected auto, cpu or cuda[:N]")
    return torch.device(device)


def use_onednn_convolutions(network) -> int:
    """Make the 3D convolutions of `network` run through oneDNN on CPU; returns how many were switched.

    Why: for a batch of one, PyTorch sends a 3D convolution with few channels (N*C*D*H <= 20480; its rule ignores W)
    to its im2col kernel, 4-5x slower on a 2-core CPU than oneDNN on the same weights. nnU-Net predicts one tile at
    a time and a click classifies one nodule, so every click paid that (classifier: 2.6x). Weights stay ordinary
    parameters (load_state_dict works as before); the results agree to float rounding. CUDA, other dtypes and string paddings take the usual path.
    """
    import torch

    onednn_conv3d, switched = _onednn_conv3d_class(), 0
    for module in network.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = onednn_conv3d
            switched += 1
    return switched


@functools.lru_cache(maxsize=None)
def _onednn_conv3d_class():  # built on first use: torch is imported lazily
    import torch

    class OneDnnConv3d(torch.nn.Conv3d):
        def forward(self, x):
            if (x.device.type == "cpu" and x.dtype == torch.float32 and self.padding_mode == "zeros"
                    and isinstance(self.padding, tuple) and torch.backends.mkldnn.is_available()):
                return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                                self.groups)
            return super().forward(x)

    return OneDnnConv3d
