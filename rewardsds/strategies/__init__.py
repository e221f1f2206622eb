"""Reward strategies: rewards of N candidates -> weights of their distillation terms.

The classes live in :mod:`rewardsds.strategies.weights` and are read from here on first use (``_target_:
rewardsds.strategies.MinMaxStrategy``), so that importing the schemas of :mod:`rewardsds.strategies.config` (every
config composition, ``rewardsds --help``) does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Strategy", "NoStrategy", "MinMaxStrategy", "BestStrategy", "WeightedStrategy", "RandomStrategy",
           "weight_entropy", "max_entropy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rewardsds.strategies import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'rewardsds.strategies' has no attribute {name!r}")
