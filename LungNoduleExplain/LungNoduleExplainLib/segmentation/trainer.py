"""nnU-Net v2 trainer subclass with a short, configurable schedule for CPU budgets.

Kept apart from training.py because importing it imports nnunetv2's trainer module (torch, batchgenerators).
"""

from __future__ import annotations

from typing import Callable

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

EpochCallback = Callable[[int, int, float, float], None]  # epoch done, epochs, train loss, EMA pseudo-Dice


class nnUNetTrainerLungNodule(nnUNetTrainer):
    """nnU-Net's default trainer (Dice + CE, SGD momentum 0.99, poly LR, full augmentation) on a short schedule.

    nnU-Net records the constructor's arguments by introspection, so the signature must stay the base class's;
    set the schedule with `configure()` before `run_training()`. Intermediate checkpoints are off (only
    checkpoint_final.pth and checkpoint_best.pth are written).
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.epoch_callback: EpochCallback | None = None

    def configure(self, epochs: int, iterations_per_epoch: int, val_iterations_per_epoch: int,
                  initial_lr: float = 1e-2, epoch_callback: EpochCallback | None = None) -> None:
        if epochs < 1 or iterations_per_epoch < 1 or val_iterations_per_epoch < 1:
            raise ValueError(f"epochs ({epochs}), iterations ({iterations_per_epoch}) and validation iterations "
                             f"({val_iterations_per_epoch}) must all be >= 1")
        self.num_epochs = int(epochs)
        self.num_iterations_per_epoch = int(iterations_per_epoch)
        self.num_val_iterations_per_epoch = int(val_iterations_per_epoch)
        self.initial_lr = float(initial_lr)
        self.save_every = self.num_epochs + 1
        self.epoch_callback = epoch_callback

    def on_epoch_end(self):
        super().on_epoch_end()  # increments current_epoch
        if self.epoch_callback is not None:
            losses = self.logger.get_value("train_losses", step=None) or [float("nan")]
            dice = self.logger.get_value("ema_fg_dice", step=None) or [float("nan")]
            self.epoch_callback(self.current_epoch, self.num_epochs, float(losses[-1]), float(dice[-1]))
