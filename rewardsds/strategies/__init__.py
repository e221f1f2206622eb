"""Reward strategies: rewards of N candidates -> weights of their distillation terms.

Pure tensor functions wrapped in small classes so Hydra can build them. A weight may be negative
(min_max pushes away from the worst candidates, RewardSDS paper Eq. 4 and Table 5). Ranking is stable:
ties keep candidate order (lower index wins), so equal rewards give reproducible selections.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.errors import ConfigError


def _rank_desc(rewards: Tensor) -> Tensor:
    """Indices sorting rewards from highest to lowest, ties broken by the lower index."""
    return torch.sort(rewards, descending=True, stable=True).indices


class Strategy:
    """Base: ``weights(rewards) -> [N]``. ``uses_reward`` tells the engine whether a lookahead is needed."""

    name: str = "strategy"
    uses_reward: bool = True

    def weights(self, rewards: Float[Tensor, "n"], generator: Optional[torch.Generator] = None) -> Float[Tensor, "n"]:
        raise NotImplementedError

    def min_candidates(self) -> int:
        return 1

    def __call__(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if rewards.dim() != 1 or rewards.numel() < 1:
            raise ValueError(f"rewards must be a 1-D tensor with at least one entry, got shape {tuple(rewards.shape)}")
        n = rewards.numel()
        if n < self.min_candidates():
            raise ConfigError(
                "n_noises", n, f"is smaller than the {self.min_candidates()} candidates strategy {self.name!r} needs",
                f"set n_noises>={self.min_candidates()}",
            )
        return self.weights(rewards.float(), generator)


class NoStrategy(Strategy):
    """Plain distillation: every candidate gets 1/N (N = 1 is standard SDS)."""

    name = "none"
    uses_reward = False

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n = rewards.numel()
        return torch.full((n,), 1.0 / n, device=rewards.device)


class MinMaxStrategy(Strategy):
    """+lambda_max on the n_max best, -lambda_min on the n_min worst candidates (RewardSDS default).

    Args:
        lambda_max: total weight of the top group (0.9).
        lambda_min: total weight subtracted for the bottom group (0.1).
        n_max: size of the top group (2).
        n_min: size of the bottom group (2).
        scale: ``mean`` gives ``lambda_max / n_max`` and ``-lambda_min / n_min`` per candidate (the
            reference code's ``0.9 mean(top) - 0.1 mean(bottom)``); ``paper`` gives ``+lambda_max`` and
            ``-lambda_min`` per candidate divided by N (paper Eq. 4 with its ``1/N``). Both are 9 : -1.
    """

    name = "min_max"

    def __init__(self, lambda_max: float = 0.9, lambda_min: float = 0.1, n_max: int = 2, n_min: int = 2, scale: str = "mean"):
        self.lambda_max, self.lambda_min = float(lambda_max), float(lambda_min)
        self.n_max, self.n_min = int(n_max), int(n_min)
        self.scale = getattr(scale, "value", scale)
        if self.scale not in ("mean", "paper"):
            raise ConfigError("strategy.scale", scale, "is not a known scale", "use mean or paper")

    def min_candidates(self) -> int:
        return self.n_max + self.n_min

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n = rewards.numel()
        order = _rank_desc(rewards)
        w = torch.zeros(n, device=rewards.device)
        if self.scale == "mean":
            top, bottom = self.lambda_max / self.n_max, -self.lambda_min / max(1, self.n_min)
        else:
            top, bottom = self.lambda_max / n, -self.lambda_min / n
        # index_fill_ with a Python scalar: no host-to-device copy, so the step never waits on the GPU here
        w.index_fill_(0, order[: self.n_max], top)
        if self.n_min:
            w.index_fill_(0, order[n - self.n_min :], bottom)
        return w


class BestStrategy(Strategy):
    """Weight 1/n_best on the n_best highest rewards (n_best = 1: winner takes all)."""

    name = "best"

    def __init__(self, n_best: int = 1):
        self.n_best = int(n_best)

    def min_candidates(self) -> int:
        return self.n_best

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        w = torch.zeros_like(rewards)
        w.index_fill_(0, _rank_desc(rewards)[: self.n_best], 1.0 / self.n_best)
        return w


class WeightedStrategy(Strategy):
    """Softmax of rewards / temperature (reference: temperature 1 on raw scores).

    With ``standardize`` the rewards are z-scored within the candidate set first, which makes the
    temperature independent of the reward's scale (ALGORITHMS.md 5.10 item 4).
    """

    name = "weighted"

    def __init__(self, temperature: float = 1.0, standardize: bool = False):
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        r = rewards
        if self.standardize and r.numel() > 1:
            r = (r - r.mean()) / (r.std(unbiased=False) + 1e-8)
        return torch.softmax(r / self.temperature, dim=0)


class RandomStrategy(Strategy):
    """One candidate uniformly at random, weight 1 (paper Table 5 (i)); draws from ``generator``."""

    name = "random"
    uses_reward = False

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n = rewards.numel()
        i = int(torch.randint(0, n, (1,), generator=generator))
        w = torch.zeros(n, device=rewards.device)
        w[i] = 1.0
        return w


def weight_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of |w| / sum|w|: 0 for one-hot, log N for uniform; defined for negative weights."""
    p = weights.abs()
    p = p / p.sum().clamp_min(1e-12)
    return -(p * torch.log(p.clamp_min(1e-12))).sum()


def max_entropy(n: int) -> float:
    return math.log(n) if n > 1 else 0.0
