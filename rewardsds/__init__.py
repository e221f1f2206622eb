"""rewardsds: reward-weighted score distillation (RewardSDS and relatives) on Hydra + Lightning."""

__version__ = "0.1.0"
