"""Every random draw of a run, keyed on (run seed, step, stream, index).

Keying each draw on the step makes a resumed run draw exactly the noises, timesteps and cameras of an uninterrupted
one, and makes strategies that differ only in weighting see identical candidates for the same seed. Candidate i's
noise depends on (seed, step, i) alone, never on N, so ``n_noises=4`` and ``n_noises=8`` share their first four.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class Streams:
    """Stream ids for :func:`seed_for`: each random quantity has its own stream."""

    TIMESTEP = 1
    NOISE = 2
    CAMERA = 3
    LORA = 4
    AUX = 5
    LOOKAHEAD = 6
    STRATEGY = 7
    PREFERENCE = 8  # the shared noise of a re-noised win/lose preview pair (PSD's DPO loss)


def seed_for(seed: int, step: int, stream: int, index: int = 0) -> int:
    """A 63-bit seed for (run seed, step, stream, index), stable across processes and devices (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB + index * 0x2545F4914F6CDD1D)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 63) - 1)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (one reusable generator per device: creating CUDA generators
    is not free)."""
    device = torch.device(device)
    g = _GENERATORS.get(str(device))
    if g is None:
        g = _GENERATORS[str(device)] = torch.Generator(device=device)
    return g.manual_seed(seed)


_GENERATORS: dict[str, torch.Generator] = {}


def seeded_randn(shape: Sequence[int], seed: int, device: torch.device | str, dtype=torch.float32) -> Tensor:
    """A standard normal draw of ``shape`` from a generator seeded with ``seed`` on ``device``."""
    return torch.randn(tuple(shape), generator=generator(seed, device), device=device, dtype=dtype)


def candidate_noise(n: int, shape: Sequence[int], seed: int, step: int, device, stream: int = Streams.NOISE) -> Tensor:
    """Noises [n, *shape]: candidate i's from ``seed_for(seed, step, stream, i)`` (independent of n)."""
    return torch.stack([seeded_randn(shape, seed_for(seed, step, stream, i), device) for i in range(n)])
