"""An ensemble of networks of one configuration, used as one network.

Each member was trained on a different part of the training patients (`runs.train_run` with members > 1). The
ensemble's probability is the mean of the members' probabilities (returned as its logit, so callers apply the
sigmoid as for one network); its activation map is the mean of the members' maps, still in [0, 1].
`member_probabilities` gives each member's own probability, to show how far the members agree.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

LOGIT_EPS = 1e-6  # keeps logit(mean probability) finite when every member is certain


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    @staticmethod
    def _mean_logit(logits: list[Tensor]) -> Tensor:
        return torch.logit(torch.stack([torch.sigmoid(z) for z in logits]).mean(0), eps=LOGIT_EPS)

    def forward(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None) -> Tensor:
        return self._mean_logit([m(image, prior, descriptors) for m in self.members])

    def activation_maps(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
        """(logit of the mean probability [B, n_outputs], mean of the members' maps [B, n_outputs, D, H, W])."""
        logits, maps = zip(*(m.activation_maps(image, prior, descriptors) for m in self.members))
        return self._mean_logit(list(logits)), torch.stack(maps).mean(0)

    def member_logits(self, image: Tensor, prior: Tensor | None = None, descriptors: Tensor | None = None
                      ) -> Tensor:
        """Each member's logits [n_members, B, n_outputs] (forward() averages their probabilities)."""
        return torch.stack([m(image, prior, descriptors) for m in self.members])


def member_probabilities(model: nn.Module, image: Tensor, prior: Tensor | None = None,
                         descriptors: Tensor | None = None) -> Tensor:
    """Sigmoid probabilities [n_members, B, n_outputs] of each member of an Ensemble; [1, B, n_outputs] for a
    single network (no spread to show)."""
    if isinstance(model, Ensemble):
        return torch.sigmoid(model.member_logits(image, prior, descriptors))
    return torch.sigmoid(model(image, prior, descriptors))[None]
