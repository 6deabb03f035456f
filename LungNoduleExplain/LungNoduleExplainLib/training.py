"""Training of the classifier: the paper's two-phase cascade with task prioritisation.

Phase 1 trains the backbone and the manifestation head with the diagnosis head frozen. At its end the task weights
w_i = 1 / AUC_i (validation AUC of manifestation i) are fixed; phase 2 trains everything on
BCE(diagnosis) + sum_i w_i BCE(manifestation i). SGD (lr 0.01, momentum 0.9), lr x0.1 after `plateau_patience`
epochs without improvement of the selection metric V_D + (1/K) sum_i V_Mi, early stopping after
`early_stop_patience`, the best epoch kept. A checkpoint is written atomically every epoch; `resume` continues
exactly: the data order and augmentations of epoch e depend only on (seed, e).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .data.patches import PatchDataset, PatchSet
from .atomic import atomic_path, remove_leftovers, write_text_atomic
from .devices import resolve_device
from .vocabulary import Device
from .errors import ConfigError
from .metrics import safe_auc
from .networks import build_network, predict
from .progress import Progress
from .train_config import TrainConfig  # noqa: F401 (re-exported: the trainer's config)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
RESUMABLE_CHANGES = ("max_epochs", "threads")
HISTORY_NAME = "history.csv"


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Per-output BCE [n_outputs] averaged over the labelled entries of the batch (NaN targets left out); targets
    are 0/1 labels or readers' shares in [0, 1]."""
    known = ~torch.isnan(targets)
    target = torch.nan_to_num(targets, nan=0.0)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    loss = loss * known
    return loss.sum(0) / known.sum(0).clamp_min(1)


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-output pos_weight = negatives / positives on the training targets (as the authors), capped at 20; a
    readers' share t counts as t of a positive and 1 - t of a negative."""
    pos = np.nansum(targets, axis=0).astype(float)
    neg = np.nansum(1.0 - targets, axis=0).astype(float)
    return torch.tensor(np.clip(neg / np.maximum(pos, 1), 0.05, 20.0), dtype=torch.float32)


def task_weights_from_auc(aucs: list[float]) -> list[float]:
    """Task prioritisation w_i = 1 / AUC_i; an undefined AUC counts as chance (0.5), so w_i <= 2."""
    return [1.0 / max(a, 0.5) if not math.isnan(a) else 2.0 for a in aucs]


def selection_metric(aucs: list[float], multitask: bool) -> float:
    """V_D + (1/K) sum_i V_Mi (undefined manifestation AUCs skipped); V_D alone for single-task models."""
    diag = aucs[0] if not math.isnan(aucs[0]) else 0.5
    if not multitask or len(aucs) == 1:
        return diag
    rest = [a for a in aucs[1:] if not math.isnan(a)]
    return diag + (float(np.mean(rest)) if rest else 0.0)


def output_aucs(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    return [safe_auc(labels[:, k], probs[:, k]) for k in range(probs.shape[1])]


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_metric: float
    val_probs: np.ndarray
    task_weights: list[float]
    history: list[dict]
    seconds: float


class Trainer:
    """Runs the cascade on a training and a validation PatchSet, writing checkpoints and logs into `out_dir`."""

    def __init__(self, config: TrainConfig, train_set: PatchSet, val_set: PatchSet, out_dir: str | Path,
                 n_manifestations: int, output_names: list[str], device: str = Device.AUTO,
                 progress: Progress | None = None, show_progress_bar: bool = True) -> None:
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = distributed.local_device(resolve_device(device))
        self.progress, self.show_progress_bar = progress, show_progress_bar
        self.output_names = output_names
        self.multitask = config.network.multitask
        n_outputs = 1 + n_manifestations if self.multitask else 1
        self.n_outputs = n_outputs
        self.val_labels = val_set.labels[:, :n_outputs]
        torch.manual_seed(config.seed)
        # channels-last 3D memory is about 1.6x faster for these small-channel 3D convolutions on CPU (oneDNN).
        self.model = build_network(config.network, n_manifestations).to(self.device,
                                                                         memory_format=torch.channels_last_3d)
        if config.network.descriptors:  # standardised with the training set's statistics, stored in the weights
            d = torch.from_numpy(train_set.descriptors.astype(np.float64))
            self.model.set_descriptor_statistics(d.mean(0).float().to(self.device), d.std(0).float().to(self.device))
        # Under torchrun the network trains wrapped in DDP; `self.model` stays the plain module (saved, evaluated).
        self.net: nn.Module = self.model
        if distributed.is_distributed():
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.pos_weight = positive_weights(train_set.targets[:, :n_outputs]).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.1,
                                                                    patience=config.plateau_patience)
        # Phase 1 needs a separate diagnosis head to freeze; baselines share one linear layer and skip it.
        self.has_phase1 = self.multitask and config.phase1_epochs > 0 and config.network.spec.separate_heads
        self.state = {"epoch": -1, "task_weights": [1.0] * n_outputs, "best_metric": -math.inf, "best_epoch": -1,
                      "bad_epochs": 0, "history": []}
        self.best_state: dict[str, torch.Tensor] | None = None

    # -- checkpointing -------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        if not distributed.is_main_process():
            return
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "best_model": self.best_state,
                        "state": json.dumps(self.state), "config": json.dumps(self.config.to_dict())}, tmp)

    def load_checkpoint(self) -> None:
        if not self.checkpoint_path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {self.checkpoint_path}")
        ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        saved, current = json.loads(ckpt["config"]), json.loads(json.dumps(self.config.to_dict()))
        for key in RESUMABLE_CHANGES:  # a run may be extended or given other threads; anything else must match
            saved.pop(key, None), current.pop(key, None)
        if saved != current:
            raise ConfigError(f"--resume: {self.checkpoint_path} was written with a different training config")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.best_state = ckpt["best_model"]
        self.state = json.loads(ckpt["state"])

    # -- one epoch -------------------------------------------------------------------------------------------------
    def _phase(self, epoch: int) -> int:
        return 1 if self.has_phase1 and epoch < self.config.phase1_epochs else 2

    def _drop_diagnosis_gradients(self) -> None:
        """Phase 1 freezes the diagnosis head: its loss weight is 0 and SGD skips parameters without gradient
        (so neither momentum nor weight decay moves them). Works the same under DDP."""
        for p in self.model.diagnosis_head.parameters():
            p.grad = None

    def _train_epoch(self, epoch: int, phase: int) -> float:
        cfg = self.config
        self.model.train()
        rank, world = distributed.rank(), distributed.world_size()
        dataset = PatchDataset(self.train_set, inputs=cfg.network.inputs, augment_seed=cfg.seed)
        dataset.epoch = epoch
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(dataset))
        torch.manual_seed(cfg.seed * 100003 + epoch)
        weights = torch.tensor(self.state["task_weights"], device=self.device)
        if phase == 1:
            weights = weights.clone()
            weights[0] = 0.0
        total, batches = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            if len(batch) < 2 * world:
                continue  # BatchNorm needs more than one sample per process
            items = [dataset[int(i)] for i in batch[rank::world]]
            image, prior, descriptors, targets = (torch.stack(t).to(self.device) for t in zip(*items))
            image, prior = (t.contiguous(memory_format=torch.channels_last_3d) for t in (image, prior))
            targets = targets[:, :self.n_outputs]
            per_task = masked_bce(self.net(image, prior, descriptors), targets, self.pos_weight)
            loss = (weights * per_task).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if phase == 1:
                self._drop_diagnosis_gradients()
            self.optimizer.step()
            total, batches = total + loss.item(), batches + 1
        return total / max(batches, 1)

    # -- the whole run ---------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if resume:
            if distributed.is_main_process():  # the one writer of checkpoints
                remove_leftovers(self.checkpoint_path)  # a checkpoint write that the kill interrupted
            self.load_checkpoint()
        start_time = time.time() - sum(h.get("seconds", 0.0) for h in self.state["history"])
        first_epoch = self.state["epoch"] + 1
        bar = tqdm(range(first_epoch, cfg.max_epochs), initial=first_epoch, total=cfg.max_epochs, desc="epochs",
                   disable=not self.show_progress_bar or not distributed.is_main_process(), unit="ep")
        for epoch in bar:
            if self.state["bad_epochs"] >= cfg.early_stop_patience:
                break  # resumed after an early stop: the run is complete
            t0 = time.time()
            phase = self._phase(epoch)
            lr = self.optimizer.param_groups[0]["lr"]  # read now: scheduler.step below may lower it for the next epoch
            loss = self._train_epoch(epoch, phase)
            distributed.sync_buffers(self.model)
            probs = predict(self.model, self.val_set, self.device, cfg.network.inputs)
            aucs = output_aucs(probs, self.val_labels)
            metric = selection_metric(aucs, self.multitask)
            if phase == 1 and epoch == cfg.phase1_epochs - 1:
                self.state["task_weights"] = [1.0] + task_weights_from_auc(aucs[1:])
                logger.info("end of phase 1: task weights %s", np.round(self.state["task_weights"], 3).tolist())
            if phase == 2:
                self.scheduler.step(metric)
                if metric > self.state["best_metric"]:
                    self.state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0)
                    self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                else:
                    self.state["bad_epochs"] += 1
            record = {"epoch": epoch, "phase": phase, "lr": lr, "train_loss": loss,
                      "val_metric": metric, "seconds": time.time() - t0,
                      **{f"val_auc_{n}": a for n, a in zip(self.output_names, aucs)}}
            self.state["history"].append(record)
            self.state["epoch"] = epoch
            self.save_checkpoint()
            if distributed.is_main_process():
                write_history(self.state["history"], self.out_dir)
            bar.set_postfix(phase=phase, loss=f"{loss:.3f}", val=f"{metric:.3f}")
            if self.progress:
                self.progress((epoch + 1) / cfg.max_epochs,
                              f"epoch {epoch + 1}/{cfg.max_epochs} phase {phase} loss {loss:.3f} val {metric:.3f}")
            if phase == 2 and self.state["bad_epochs"] >= cfg.early_stop_patience:
                logger.info("early stopping at epoch %d (best %d)", epoch, self.state["best_epoch"])
                break
        bar.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if distributed.is_main_process():
            plot_history(self.state["history"], self.out_dir / "curves.png")
        distributed.barrier()
        return TrainResult(self.model, self.state["best_epoch"], self.state["best_metric"],
                           predict(self.model, self.val_set, self.device, cfg.network.inputs),
                           self.state["task_weights"],
                           self.state["history"], time.time() - start_time)


def write_history(history: list[dict], out_dir: Path) -> None:
    """Per-epoch log as CSV (atomically)."""
    if not history:
        return
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{h.get(k, '')}" for k in keys) for h in history]
    write_text_atomic(out_dir / HISTORY_NAME, "\n".join(lines) + "\n")


def plot_history(history: list[dict], path: Path) -> None:
    """Training loss and validation AUCs per epoch."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax_loss.set(xlabel="epoch", ylabel="weighted BCE", title="training loss")
    for key in [k for k in history[0] if k.startswith("val_auc_")]:
        ax_auc.plot(epochs, [h[key] for h in history], label=key.removeprefix("val_auc_"))
    ax_auc.set(xlabel="epoch", ylabel="AUC", title="validation AUC", ylim=(0.4, 1.0))
    ax_auc.legend(fontsize=7, ncol=2)
    phase2 = next((h["epoch"] for h in history if h["phase"] == 2), None)
    for ax in (ax_loss, ax_auc):
        if phase2 is not None and phase2 > 0:
            ax.axvline(phase2 - 0.5, color="grey", ls="--", lw=0.8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
