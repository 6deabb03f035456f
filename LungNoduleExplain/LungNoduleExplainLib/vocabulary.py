"""The names the engine and its faces share: devices, point spaces and training priors, each written once.

The command line (`choices=`), the worker's request protocol, the Slicer module's parameter node and the training
CLI module take their lists from here; what cannot import Python (the CLI module's XML) is checked against it by
Testing/test_vocabulary.py. The spellings are a public surface (flags, request JSON, manifests): add, never rename.
Network variants have their own registry (network_config.VARIANTS); which device a name runs on is
devices.choose_device. No torch here: a parser imports this and stays fast.
"""

from __future__ import annotations

from enum import Enum


class Vocabulary(str, Enum):
    """A closed set of names; each member is also the plain string it stands for ("cpu" == Device.CPU, and str()
    and f-strings give "cpu"): enum.StrEnum's behaviour, which Python 3.10 (requires-python) does not have."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The spellings, in declaration order: what `choices=` and validation messages use."""
        return tuple(member.value for member in cls)

    @classmethod
    def listed(cls) -> str:
        """The names for a sentence: "auto, cpu or cuda"."""
        *head, last = cls.names()
        return f"{', '.join(head)} or {last}" if head else last


class Device(Vocabulary):
    """Where the networks run, as a user asks for it (devices.choose_device turns it into a torch device)."""

    AUTO = "auto"  # the CUDA GPU when PyTorch finds one, else the CPU (and the user is told)
    CPU = "cpu"
    CUDA = "cuda"  # a CUDA GPU, or an error saying there is none


class PointSpace(Vocabulary):
    """How a point's three coordinates are meant (volume.point_to_lps converts each to LPS mm)."""

    RAS = "ras"
    LPS = "lps"
    IJK = "ijk"

    @property
    def meaning(self) -> str:
        return {"ras": "RAS millimetres, as Slicer shows them",
                "lps": "LPS millimetres, as ITK/DICOM store them",
                "ijk": "voxel index i,j,k (column, row, slice) counted from 0"}[self.value]


class Prior(Vocabulary):
    """What fed the attention gates while a classifier trained, as its bundle's manifest records it."""

    REFERENCE_MASK = "reference-mask"  # the readers' masks of the training table
    NNUNET_OOF = "nnunet-oof"  # out-of-fold nnU-Net probability maps (a folder of <case_id>.nii.gz)
