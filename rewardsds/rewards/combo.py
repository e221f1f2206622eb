"""A weighted sum of rewards: ``R(x, y) = sum_k w_k R_k(x, y)``.

Components are full reward configs nested under ``reward.components.<name>`` (Hydra instantiates them
before this class); ``<name>`` is the log name of the component (``train/reward_<name>``), so it must be
a lowercase identifier. Scores are not rescaled: ImageReward is about unit scale, the aesthetic score
about 5, CLIP cosines about 0.3, so choose weights with that in mind.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.rewards.base import Reward

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ComboReward(Reward):
    """Weighted sum of component rewards; the last per-component scores are kept for logging.

    Args:
        components: name -> reward (instantiated).
        weights: name -> weight, one per component.

    Attributes:
        last_components: name -> detached fp32 scores [b] of the most recent call.
    """

    name = "combo"

    def __init__(self, components: Mapping[str, Reward], weights: Mapping[str, float]):
        super().__init__()
        components, weights = dict(components), {k: float(v) for k, v in dict(weights).items()}
        if not components:
            raise ConfigError("reward.components", {}, "is empty", "list at least one component reward")
        if set(components) != set(weights):
            raise ConfigError("reward.weights", weights, f"must have exactly the keys of reward.components "
                              f"{sorted(components)}", "give one weight per component")
        for key, comp in components.items():
            if not _NAME.match(key):
                raise ConfigError(f"reward.components.{key}", key, "is not a log-friendly name",
                                  "use a lowercase identifier such as image_reward or aesthetic")
            if not isinstance(comp, Reward):
                raise ConfigError(f"reward.components.{key}", type(comp).__name__, "is not a reward",
                                  "nest a reward config (with its _target_) under reward.components")
        self.components: dict[str, Reward] = components
        self.weights: dict[str, float] = weights
        self.differentiable = all(c.differentiable for c in components.values())
        self.uses_prompt = any(c.uses_prompt for c in components.values())
        self.last_components: dict[str, Tensor] = {}

    def to(self, device: torch.device | str) -> "ComboReward":
        self.device = torch.device(device)
        for comp in self.components.values():
            comp.to(self.device)
        return self

    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        total = torch.zeros(images.shape[0], device=images.device)
        self.last_components = {}
        for key, comp in self.components.items():
            # inputs are already validated; the grad mode of the outer call applies to every component
            scores = comp._score(images.to(comp.device), prompts).float().to(images.device)
            self.last_components[key] = scores.detach()
            total = total + self.weights[key] * scores
        return total
