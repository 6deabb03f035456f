"""Nodule segmentation with nnU-Net v2: dataset export, small plans, training, crop-around-a-click inference, Dice.

Importing this package does not import nnunetv2 or torch; the functions that need them import them when called.
"""

from .export import export_nnunet_dataset
from .metrics import bootstrap_mean_ci, dice, segmentation_dice
from .predict import NoduleSegmenter, SegmentationResult

__all__ = ["export_nnunet_dataset", "NoduleSegmenter", "SegmentationResult", "dice", "segmentation_dice",
           "bootstrap_mean_ci"]
