"""Reward for the analytic prior: closeness to preferred modes of the Gaussian mixture."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.priors.analytic import DEFAULT_MODES, _field, mode_image, mode_keywords
from rewardsds.rewards.base import Reward, resize_for


class AnalyticReward(Reward):
    """``-min_k mean((x - mu_k)^2)`` over the preferred modes k, in [0, 1] RGB at ``image_size``.

    0 is a perfect match of a preferred mode; a typical other mode scores about -0.1 to -0.4. Modes are
    chosen by name or keyword (``preferred=[blue]`` selects every mode with the keyword "blue").

    Args:
        preferred: mode names or keywords.
        modes: the mode definitions (empty = the analytic prior's defaults).
        image_size: resolution at which images are compared.
    """

    differentiable = True
    uses_prompt = False
    name = "analytic"

    def __init__(self, preferred: Sequence[str] = ("blue",), modes: Optional[Sequence[Any]] = None, image_size: int = 16):
        super().__init__()
        modes = list(modes) if modes else [dict(m) for m in DEFAULT_MODES]
        pref = [p.lower() for p in preferred]
        chosen = [m for m in modes if str(_field(m, "name")).lower() in pref or set(mode_keywords(m)) & set(pref)]
        if not chosen:
            names = [str(_field(m, "name")) for m in modes]
            raise ConfigError("reward.preferred", list(preferred), "matches no mode name or keyword",
                              f"choose among the modes {names} or their keywords")
        self.preferred_names = [str(_field(m, "name")) for m in chosen]
        self.image_size = int(image_size)
        self._targets = torch.stack([mode_image(m, self.image_size) for m in chosen])  # [P,3,h,w] in [0,1]

    def to(self, device: torch.device | str) -> "AnalyticReward":
        super().to(device)
        self._targets = self._targets.to(self.device)
        return self

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        x = resize_for(images.float(), self.image_size)
        d = ((x[:, None] - self._targets[None]) ** 2).flatten(2).mean(-1)  # [b, P]
        return -d.min(dim=1).values
