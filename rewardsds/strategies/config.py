"""Config schemas of the reward strategies (``conf/strategy/*.yaml``), beside their classes. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING

from rewardsds.schema import check, enum_option


class MinMaxScale(str, Enum):
    mean = "mean"  # reference code: lambda_max * mean(top) - lambda_min * mean(bottom)
    paper = "paper"  # paper text: +lambda_max each top, -lambda_min each bottom, then / N


@dataclass
class StrategyConfig:
    _target_: str = MISSING


@dataclass
class NoStrategyConfig(StrategyConfig):
    """Plain distillation: every candidate weighted 1/N, no lookahead or reward."""



@dataclass
class MinMaxStrategyConfig(StrategyConfig):
    """RewardSDS default: +lambda_max on the top n_max, -lambda_min on the bottom n_min candidates."""

    lambda_max: float = 0.9
    lambda_min: float = 0.1
    n_max: int = 2
    n_min: int = 2
    scale: MinMaxScale = MinMaxScale.mean

    def __post_init__(self) -> None:
        check(self.lambda_max >= 0, "strategy.lambda_max", self.lambda_max, "must be >= 0 (the pull towards the best candidates)",
               "use 0.9")
        check(self.lambda_min >= 0, "strategy.lambda_min", self.lambda_min,
               "must be >= 0 (the push away from the worst candidates; the sign is applied by the strategy)", "use 0.1")
        check(self.n_max >= 1, "strategy.n_max", self.n_max, "must be >= 1", "use 2")
        check(self.n_min >= 0, "strategy.n_min", self.n_min, "must be >= 0", "use 2 (0 disables the push-away term)")
        self.scale = enum_option(MinMaxScale, self.scale, "strategy.scale")


@dataclass
class BestStrategyConfig(StrategyConfig):
    """Winner(s) take all: weight 1/n_best on the n_best highest rewards."""

    n_best: int = 1

    def __post_init__(self) -> None:
        check(self.n_best >= 1, "strategy.n_best", self.n_best, "must be >= 1", "use 1 or 2")


@dataclass
class WeightedStrategyConfig(StrategyConfig):
    """Softmax of rewards with a temperature (reference: temperature 1 on raw scores)."""

    temperature: float = 1.0
    standardize: bool = False  # z-score rewards within the candidate set before the softmax

    def __post_init__(self) -> None:
        check(self.temperature > 0, "strategy.temperature", self.temperature, "must be > 0", "use 1.0")


@dataclass
class RandomStrategyConfig(StrategyConfig):
    """Paper ablation (i): one candidate chosen uniformly at random (ignores rewards)."""

