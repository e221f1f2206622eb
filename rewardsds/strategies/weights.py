"""The reward strategies (rewards of N candidates -> weights of their distillation terms), exported by rewardsds.strategies.

Pure tensor functions wrapped in small classes, each built from its schema (``rewardsds.strategies.config``). A
weight may be negative (min_max pushes away from the worst candidates, RewardSDS paper Eq. 4 and Table 5). Ranking
is stable: ties keep candidate order (lower index wins), so equal rewards give reproducible selections.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.strategies.config import (BestStrategyConfig, MinMaxScale, MinMaxStrategyConfig, NoStrategyConfig,
                                         RandomStrategyConfig, WeightedStrategyConfig)


def _rank_desc(rewards: Tensor) -> Tensor:
    """Indices sorting rewards from highest to lowest, ties broken by the lower index."""
    return torch.sort(rewards, descending=True, stable=True).indices


class Strategy:
    """Base: ``weights(rewards) -> [N]``. ``uses_reward`` tells the step whether the candidates need a lookahead and
    a reward."""

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
                "n_noises", n, f"is smaller than the {self.min_candidates()} candidates {type(self).__name__} needs",
                f"set n_noises>={self.min_candidates()}",
            )
        return self.weights(rewards.float(), generator)


class NoStrategy(Strategy):
    """Plain distillation: every candidate gets 1/N (N = 1 is standard SDS)."""

    uses_reward = False

    def __init__(self, cfg: NoStrategyConfig = NoStrategyConfig()):
        self.cfg = cfg

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n = rewards.numel()
        return torch.full((n,), 1.0 / n, device=rewards.device)


class MinMaxStrategy(Strategy):
    """+lambda_max on the n_max best, -lambda_min on the n_min worst candidates (RewardSDS default).

    ``scale: mean`` gives ``lambda_max / n_max`` and ``-lambda_min / n_min`` per candidate (the reference code's
    ``0.9 mean(top) - 0.1 mean(bottom)``); ``paper`` gives ``+lambda_max`` and ``-lambda_min`` per candidate divided
    by N (paper Eq. 4 with its ``1/N``). Both are 9 : -1.

    The one numerical departure from the 2D reference code: the reference divides each kept candidate's loss by the
    number of kept candidates M (n_max + n_min) once more, so its gradient is 1/M of ours. Adam's update does not
    depend on the gradient's scale (up to its epsilon), so the two optimise identically (tests/test_reference_structure.py
    checks the factor).
    """

    def __init__(self, cfg: MinMaxStrategyConfig):
        self.cfg = cfg

    def min_candidates(self) -> int:
        return self.cfg.n_max + self.cfg.n_min

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        c = self.cfg
        n = rewards.numel()
        order = _rank_desc(rewards)
        w = torch.zeros(n, device=rewards.device)
        if c.scale is MinMaxScale.mean:
            top, bottom = c.lambda_max / c.n_max, -c.lambda_min / max(1, c.n_min)
        else:
            top, bottom = c.lambda_max / n, -c.lambda_min / n
        # index_fill_ with a Python scalar: no host-to-device copy, so the step never waits on the GPU here
        w.index_fill_(0, order[: c.n_max], top)
        if c.n_min:
            w.index_fill_(0, order[n - c.n_min :], bottom)
        return w


class BestStrategy(Strategy):
    """Weight 1/n_best on the n_best highest rewards (n_best = 1: winner takes all)."""

    def __init__(self, cfg: BestStrategyConfig):
        self.cfg = cfg

    def min_candidates(self) -> int:
        return self.cfg.n_best

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        w = torch.zeros_like(rewards)
        w.index_fill_(0, _rank_desc(rewards)[: self.cfg.n_best], 1.0 / self.cfg.n_best)
        return w


class WeightedStrategy(Strategy):
    """Softmax of rewards / temperature (reference: temperature 1 on raw scores).

    With ``standardize`` the rewards are z-scored within the candidate set first, which makes the
    temperature independent of the reward's scale (ALGORITHMS.md 5.10 item 4).
    """

    def __init__(self, cfg: WeightedStrategyConfig):
        self.cfg = cfg

    def weights(self, rewards: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        r = rewards
        if self.cfg.standardize and r.numel() > 1:
            r = (r - r.mean()) / (r.std(unbiased=False) + 1e-8)
        return torch.softmax(r / self.cfg.temperature, dim=0)


class RandomStrategy(Strategy):
    """One candidate uniformly at random, weight 1 (paper Table 5 (i)); draws from ``generator``."""

    uses_reward = False

    def __init__(self, cfg: RandomStrategyConfig = RandomStrategyConfig()):
        self.cfg = cfg

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
