"""DistributedDataParallel training with 2 CPU processes (gloo) matches a single process up to batch statistics.

BatchNorm normalises each process's half-batch with its own statistics; that is the only intended difference, so
the comparison holds BatchNorm at its running statistics (a fixed affine map) in both runs and expects the same
weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch import nn

from LungNoduleExplainLib.training import TrainConfig, Trainer

from test_training import NAMES, TINY, synthetic_patches


def _config() -> TrainConfig:
    return TrainConfig(network=TINY, max_epochs=2, phase1_epochs=1, batch_size=8, lr=0.01, seed=5, threads=1)


class FixedBatchNormTrainer(Trainer):
    """Trains with BatchNorm in eval mode, removing the batch-statistics difference between 1 and 2 processes."""

    def _train_epoch(self, epoch: int, phase: int) -> float:
        module_train = self.model.train

        def train(mode: bool = True) -> nn.Module:
            module_train(mode)
            for m in self.model.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.eval()
            return self.model

        self.model.train = train  # type: ignore[method-assign]
        try:
            return super()._train_epoch(epoch, phase)
        finally:
            self.model.train = module_train  # type: ignore[method-assign]


def _train(out: Path) -> dict[str, torch.Tensor]:
    data = synthetic_patches(16)
    data.labels[0, 1] = 0.0  # every label known: per-process means then average to the global mean exactly
    trainer = FixedBatchNormTrainer(_config(), data.subset(range(12)), data.subset(range(12, 16)), out, 2, NAMES, device="cpu",
                      show_progress_bar=False)
    return {k: v.clone() for k, v in trainer.run().model.state_dict().items()}


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        state = _train(Path(out))
        if rank == 0:
            torch.save(state, Path(out) / "final_state.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_training_matches_a_single_process_up_to_batch_statistics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in Trainer(_config(), synthetic_patches(16).subset(range(12)),
                                                 synthetic_patches(16).subset(range(12, 16)), tmp_path / "init", 2,
                                                 NAMES, device="cpu", show_progress_bar=False
                                                 ).model.state_dict().items()}
    single = _train(tmp_path / "single")
    mp.spawn(_worker, args=(2, str(tmp_path / "init_file"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "final_state.pt", weights_only=True)
    weights = [k for k in single if k.endswith("weight") and single[k].dtype.is_floating_point]
    moved = torch.cat([(single[k] - initial[k]).flatten() for k in weights]).norm()
    apart = torch.cat([(single[k] - ddp[k]).flatten() for k in weights]).norm()
    assert moved > 0
    assert apart < 1e-3 * moved, f"DDP differs from single-process by {apart:.4g}; training moved {moved:.4g}"
    assert (tmp_path / "ddp" / "history.csv").is_file() and (tmp_path / "ddp" / "checkpoint.pt").is_file()
