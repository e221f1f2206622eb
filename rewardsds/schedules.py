"""Named-field schedules (never positional lists) and the timestep sampler.

A :class:`Schedule` is the value ``start`` until ``start_step``, ``end`` from ``end_step`` on, and
linear in between (threestudio's ``C()`` with names instead of a 4-list). ``end=None`` means constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from rewardsds.errors import ConfigError


@dataclass
class Schedule:
    """A piecewise-linear scalar schedule over optimisation steps.

    Args:
        start: value until ``start_step``.
        end: value from ``end_step`` on; ``None`` keeps ``start`` forever.
        start_step: first step of the ramp.
        end_step: last step of the ramp (``end_step <= start_step`` means a jump at ``start_step``).
    """

    start: float = 0.0
    end: Optional[float] = None
    start_step: int = 0
    end_step: int = 0

    def __post_init__(self) -> None:
        if self.start_step < 0:
            raise ConfigError("start_step", self.start_step, "must be >= 0", "use a step index >= 0")
        if self.end is not None and self.end_step < self.start_step:
            raise ConfigError(
                "end_step", self.end_step, f"is before start_step = {self.start_step}",
                "set end_step >= start_step (equal means a jump)",
            )

    def value(self, step: int) -> float:
        """Value at optimisation step ``step`` (0-based)."""
        if self.end is None or step < self.start_step:
            return float(self.start)
        if step >= self.end_step:
            return float(self.end)
        frac = (step - self.start_step) / max(1, self.end_step - self.start_step)
        return float(self.start + (self.end - self.start) * frac)

    @classmethod
    def from_any(cls, x: Any) -> "Schedule":
        """Accept a Schedule, a mapping with its fields (DictConfig too) or a bare number (constant)."""
        if isinstance(x, Schedule):
            return x
        if isinstance(x, (int, float)):
            return cls(start=float(x))
        if hasattr(x, "items"):
            return cls(**{k: v for k, v in x.items()})
        raise TypeError(f"cannot build a Schedule from {x!r}")


def constant(value: float) -> Schedule:
    return Schedule(start=value)


def breakpoints(*schedules: Schedule) -> list[int]:
    """The steps where any of ``schedules`` changes slope; between them all are linear, after the last constant."""
    steps = {0}
    for sched in schedules:
        if sched.end is not None:
            steps.update((sched.start_step, sched.end_step))
    return sorted(steps)


def check_timestep_range(t_min: Schedule, t_max: Schedule, prefix: str = "timesteps") -> None:
    """Raise ConfigError where ``t_min`` exceeds ``t_max`` at any step (both as fractions of T in [0, 1]).

    Both schedules are piecewise linear with the same kind of pieces, so their difference is too: checking it at
    every breakpoint of either schedule checks every step.
    """
    for key, sched in ((f"{prefix}.t_min", t_min), (f"{prefix}.t_max", t_max)):
        for v in (sched.start, sched.end):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(key, v, "is a fraction of T and must be in [0, 1]", "use e.g. 0.02 / 0.98")
    for step in breakpoints(t_min, t_max):
        lo, hi = t_min.value(step), t_max.value(step)
        if lo > hi:
            raise ConfigError(
                f"{prefix}.t_min", lo, f"is above {prefix}.t_max = {hi} at step {step}: the range of timesteps is empty",
                f"set {prefix}.t_min <= {prefix}.t_max at every step (both are fractions of T, e.g. {prefix}.t_min.start=0.02 "
                f"{prefix}.t_max.start=0.98)",
            )


@dataclass
class TimestepSampler:
    """Samples one integer diffusion timestep per step, shared by every candidate and view.

    ``t ~ U{floor(T * t_min(step)), ..., floor(T * t_max(step))}`` (threestudio convention, inclusive),
    or the odd grid {21, 23, ..., 979} of the RewardSDS 2D reference with ``grid="reference_2d"``.
    """

    t_min: Schedule
    t_max: Schedule
    num_train_timesteps: int = 1000
    grid: str = "uniform"

    def __post_init__(self) -> None:
        check_timestep_range(self.t_min, self.t_max)

    def bounds(self, step: int) -> tuple[int, int]:
        """Inclusive integer range of t at ``step``, clamped to [1, T - 1] (t_min <= t_max is checked at construction)."""
        T = self.num_train_timesteps
        lo = int(math.floor(T * self.t_min.value(step)))
        hi = int(math.floor(T * self.t_max.value(step)))
        return max(1, min(lo, T - 1)), max(1, min(hi, T - 1))

    def sample(self, step: int, seed: int) -> int:
        import torch  # imported here: the config schemas use this module and must load without torch

        from rewardsds.rng import Streams, seed_for

        g = torch.Generator().manual_seed(seed_for(seed, step, Streams.TIMESTEP))
        if self.grid == "reference_2d":
            # diffusers DDIM with 500 "leading" steps + offset 1 gives {1,3,...,999}; index in [10, 490).
            idx = int(torch.randint(10, 490, (1,), generator=g))
            return 999 - 2 * idx
        lo, hi = self.bounds(step)
        return int(torch.randint(lo, hi + 1, (1,), generator=g))
