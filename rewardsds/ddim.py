"""DDIM (Song et al. 2021), written once: the grid, the model-call timesteps of a chain, and one step.

A chain from x_t to x_0 calls the model at timesteps ``calls`` (descending, ``calls[0] = t``) and steps from each to
the next (the last to abar_0) with :func:`step`. The RewardSDS lookahead is the chain at eta = 0 on the DDIM grid
(:func:`lookahead_calls`); DDPO3D's policy is the chain at eta = 1 on an even grid (:func:`uniform_calls`).
Alphas are ``abar`` (``alphas_cumprod``) values: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor


def grid(kind: str | Enum, steps: int, T: int = 1000) -> list[int]:
    """The full DDIM grid of ``steps`` points, descending.

    ``leading``: diffusers DDIM "leading" spacing with steps_offset 1 (2D reference, 15 steps: 925, 859, ..., 67, 1).
    ``linspace``: floor(linspace(0, T-1, steps)) (3D reference: 999, 927, ..., 71, 0).
    """
    kind = kind.value if isinstance(kind, Enum) else kind
    if steps <= 0:
        return []
    if kind == "leading":
        ratio = T // steps
        return sorted({i * ratio + 1 for i in range(steps)}, reverse=True)
    if kind == "linspace":
        return sorted({int(math.floor(v)) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()}, reverse=True)
    raise ValueError(f"unknown lookahead grid {kind!r}; use leading or linspace")


def lookahead_calls(t: int, points: list[int], start: str | Enum = "exact_t") -> list[int]:
    """Timesteps at which the lookahead calls the model, descending; the last call steps to abar_0.

    ``exact_t`` starts at t itself (then visits the grid points below t); ``grid`` starts at the largest grid point
    <= t without re-noising (2D reference; the latent is at level t but is treated as tau). Grid point 0 is only a
    target, never a call.
    """
    start = start.value if isinstance(start, Enum) else start
    pts = [g for g in points if g > 0]
    if start == "exact_t":
        return [t] + [g for g in pts if g < t]
    if start == "grid":
        calls = [g for g in pts if g <= t]
        return calls if calls else [t]
    raise ValueError(f"unknown lookahead start {start!r}; use exact_t or grid")


def uniform_calls(t: int, steps: int) -> list[int]:
    """Model-call timesteps of a ``steps``-step chain from t to 0 on an even grid, descending and distinct.

    ``[round(t (steps - k) / steps) for k < steps]`` without repeats or zeros: the chain starts exactly at t and its
    last transition targets abar_0. Fewer calls than ``steps`` only when t < steps.
    """
    if steps < 1:
        raise ValueError(f"a rollout needs at least one step, got {steps}")
    calls = [int(round(t * (steps - k) / steps)) for k in range(steps)]
    return [c for c in dict.fromkeys(calls) if c > 0] or [max(1, int(t))]


def x0_estimate(x: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """The clean estimate ``(x - sqrt(1 - abar) eps) / sqrt(abar)`` (Tweedie with an epsilon prediction)."""
    return (x - (1 - abar).sqrt() * eps) / abar.sqrt()


def step(x: Tensor, eps: Tensor, abar_from: Tensor, abar_to: Tensor, eta: float = 0.0) -> tuple[Tensor, Tensor]:
    """One DDIM step from level tau to tau' < tau as a Gaussian (Song et al. 2021, Eq. 12).

    ``s = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``, ``mean = sqrt(a') x0 + sqrt(1 - a' - s^2) eps`` with
    a = abar_tau, a' = abar_tau'. eta = 0 is the deterministic DDIM step, eta = 1 the DDPM posterior variance (DDPO's
    policy, Black et al. 2023).

    Args:
        x: the sample at tau [m, c, h, w].
        eps: the (guided) noise prediction at (x, tau) [m, c, h, w].
        abar_from, abar_to: scalar tensors abar_tau, abar_tau'.
        eta: stochasticity in [0, 1].

    Returns:
        (mean [m, c, h, w], std as a scalar tensor); differentiable in x and eps.
    """
    a, a_next = abar_from.to(x.dtype), abar_to.to(x.dtype)
    var = (1 - a_next) / (1 - a) * (1 - a / a_next)
    std = eta * var.clamp_min(0).sqrt()
    mean = a_next.sqrt() * x0_estimate(x, eps, a) + (1 - a_next - std**2).clamp_min(0).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2 I) summed over all but the first axis, [m] (needs std > 0)."""
    d = (x.float() - mean.float()) / std
    per_elem = -0.5 * d**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return per_elem.flatten(1).sum(1)


def eps_from_v(v: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
    """The epsilon a v-prediction model implies: ``eps = sqrt(abar) v + sqrt(1 - abar) x_t``."""
    return abar.sqrt() * v + (1 - abar).sqrt() * x_t
