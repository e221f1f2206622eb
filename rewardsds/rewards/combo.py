"""A weighted sum of rewards: ``R(x, y) = sum_k w_k R_k(x, y)``.

Components are full reward configs nested under ``reward.components.<name>``, built here with their own
``_target_``; ``<name>`` is the log name of the component (``train/reward_<name>``), so it must be a lowercase
identifier (checked by the schema). Scores are not rescaled: ImageReward is about unit scale, the aesthetic score
about 5, CLIP cosines about 0.3, so choose weights with that in mind.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.rewards.base import Reward
from rewardsds.rewards.config import ComboRewardConfig
from rewardsds.schema import build


class ComboReward(Reward):
    """Weighted sum of component rewards; the last per-component scores are kept for logging.

    Args:
        cfg: the validated settings (:class:`~rewardsds.rewards.config.ComboRewardConfig`): name -> reward config
            of each component (each built from its ``_target_``) and name -> weight.

    Attributes:
        components: name -> the built reward.
        last_components: name -> detached fp32 scores [b] of the most recent call.
    """

    name = "combo"

    def __init__(self, cfg: ComboRewardConfig):
        super().__init__()
        self.cfg = cfg
        self.components: dict[str, Reward] = {key: build(c) for key, c in cfg.components.items()}
        self.differentiable = all(c.differentiable for c in self.components.values())
        self.uses_prompt = any(c.uses_prompt for c in self.components.values())
        self.last_components: dict[str, Tensor] = {}

    def to(self, device: torch.device | str) -> "ComboReward":
        self.device = torch.device(device)
        for comp in self.components.values():
            comp.to(self.device)
        return self

    @property
    def replays_cuda_graphs(self) -> bool:
        return any(c.replays_cuda_graphs for c in self.components.values())

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        total = torch.zeros(images.shape[0], device=images.device)
        self.last_components = {}
        for key, comp in self.components.items():
            # inputs are already validated; the grad mode of the outer call applies to every component
            scores = comp._score(images.to(comp.device), prompts).float().to(images.device)
            self.last_components[key] = scores.detach()
            total = total + float(self.cfg.weights[key]) * scores
        return total
