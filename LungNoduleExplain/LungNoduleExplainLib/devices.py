"""Which torch device to run on: the one rule for training, evaluation, analysis, segmentation, the worker and the
Slicer module (choose_device), and running fast on it."""

from __future__ import annotations

import functools
import logging
from typing import Callable

from .errors import ConfigError
from .vocabulary import Device

logger = logging.getLogger(__name__)

CUDA_MISSING = ("device 'cuda' was asked for, but PyTorch finds no CUDA GPU (a CPU-only PyTorch build, or no usable "
                "NVIDIA GPU or driver); choose device 'auto' (the GPU when there is one, else the CPU) or 'cpu'")
CPU_FALLBACK_NOTE = "CUDA not available: running on CPU"


def choose_device(requested: str | None = Device.AUTO,
                  cuda_available: Callable[[], bool] | None = None) -> tuple[str, str | None]:
    """(torch device name, note for the user or None) for a device asked for as a vocabulary.Device name.

    The rule:
    - "auto" (or None): "cuda" when PyTorch finds a CUDA GPU, else "cpu" with the note CPU_FALLBACK_NOTE. The user
      left the choice to us, so the CPU is a right answer, but it is said: each nodule (and each training epoch)
      then takes many times longer, and the user should know why.
    - "cpu": "cpu", no note.
    - "cuda" (or "cuda:N", which torchrun's processes use): that device when CUDA is available, else ConfigError.
      The user asked for something this machine cannot do (a CPU-only torch, a missing driver). Running on the
      CPU anyway would be many times slower than they planned for, and a note is easy to miss in a long
      training log or behind a Slicer progress bar; an error that says what to choose instead costs one rerun.
      The Slicer module's device note (InstallLogic.cudaNote) applies this rule ahead, so it says so before
      Analyze.
    Anything else is a ConfigError naming the choices. `cuda_available` (tests, the Slicer module's note) stands
    in for torch.cuda.is_available; torch is imported only when it is needed.
    """
    requested = Device.AUTO.value if requested is None else str(requested)
    if requested == Device.CPU:
        return Device.CPU.value, None
    if requested != Device.AUTO and not _is_cuda(requested):
        raise ConfigError(f"unknown device {requested!r}; expected {Device.listed()}")
    if (cuda_available or _torch_cuda_available)():
        return (Device.CUDA.value if requested == Device.AUTO else requested), None
    if requested == Device.AUTO:
        return Device.CPU.value, CPU_FALLBACK_NOTE
    raise ConfigError(CUDA_MISSING)


def resolve_device(requested: str | None = Device.AUTO):  # -> torch.device; torch is imported lazily
    """choose_device's device as a torch.device; its note goes to the log (INFO: the command line shows it)."""
    import torch

    name, note = choose_device(requested)
    if note:
        logger.info(note)
    return torch.device(name)


def _is_cuda(name: str) -> bool:
    """"cuda" or "cuda:N"."""
    kind, colon, index = name.partition(":")
    return kind == Device.CUDA and (not colon or index.isdigit())


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the Slicer module before its first-use install
        return False
    return bool(torch.cuda.is_available())


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
