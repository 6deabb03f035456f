"""Which torch device to run on: one rule for training, evaluation, analysis and segmentation."""

from __future__ import annotations

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
