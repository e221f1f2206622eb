"""Reward for the analytic prior: closeness to preferred modes of the Gaussian mixture."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rewardsds.priors.analytic import mode_image
from rewardsds.priors.config import modes_or_default
from rewardsds.rewards.base import Reward, resize_for
from rewardsds.rewards.config import AnalyticRewardConfig, preferred_modes


class AnalyticReward(Reward):
    """``-min_k mean((x - mu_k)^2)`` over the preferred modes k, in [0, 1] RGB at ``image_size``.

    0 is a perfect match of a preferred mode; a typical other mode scores about -0.1 to -0.4. Modes are
    chosen by name or keyword (``preferred=[blue]`` selects every mode with the keyword "blue").

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.AnalyticRewardConfig`): the preferred mode
            names or keywords, the mode definitions (empty = the analytic prior's defaults) and the resolution at
            which images are compared.
    """

    differentiable = True
    uses_prompt = False
    name = "analytic"

    def __init__(self, cfg: AnalyticRewardConfig):
        super().__init__()
        self.cfg = cfg
        chosen = preferred_modes(cfg.preferred, modes_or_default(cfg.modes))  # never empty: the schema checks it
        self.preferred_names = [str(m.name) for m in chosen]
        self._targets = torch.stack([mode_image(m, cfg.image_size) for m in chosen])  # [P,3,h,w] in [0,1]

    def to(self, device: torch.device | str) -> "AnalyticReward":
        super().to(device)
        self._targets = self._targets.to(self.device)
        return self

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        x = resize_for(images.float(), self.cfg.image_size)
        d = ((x[:, None] - self._targets[None]) ** 2).flatten(2).mean(-1)  # [b, P]
        return -d.min(dim=1).values
