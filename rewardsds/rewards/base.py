"""The reward interface: batched RGB tensors in [0,1] + prompts -> one score per image.

Rewards are frozen models (or plain functions) kept outside ``nn.Module`` registration of the system,
like priors. Higher is better for every reward. The hot path is tensor in, tensor out: no PIL round trip
unless a reward documents a ``pil_exact`` option.
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.errors import RewardSDSError


class RewardInputError(RewardSDSError, ValueError):
    """Images or prompts handed to a reward are malformed."""


class Reward(abc.ABC):
    """A scalar reward on images, optionally conditioned on the prompt.

    Subclasses implement :meth:`_score`. ``__call__`` validates inputs (shape, range, prompt count)
    unless ``check=False`` (the training loop passes clamped decoder outputs and skips the host sync).

    Attributes:
        name: short name used in metric keys (``train/reward_<name>`` for components of a combo).
        differentiable: whether ``_score`` keeps the autograd graph when asked (``grad=True``).
        uses_prompt: whether the score depends on the prompt.
    """

    name: str = "reward"
    differentiable: bool = False
    uses_prompt: bool = True

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    @abc.abstractmethod
    def _score(self, images: Float[Tensor, "b 3 H W"], prompts: Sequence[str]) -> Float[Tensor, "b"]:
        """Scores for validated images in [0,1] on ``self.device``."""

    def to(self, device: torch.device | str) -> "Reward":
        self.device = torch.device(device)
        return self

    @property
    def replays_cuda_graphs(self) -> bool:
        """Whether scoring replays CUDA graphs (``compile=true`` on CUDA). Those graphs share torch.compile's one
        memory pool per device with the compiled prior's, so they run on the stream the prior's graphs run on."""
        return bool(getattr(getattr(self, "cfg", None), "compile", False)) and self.device.type == "cuda"

    def __call__(
        self,
        images: Float[Tensor, "b 3 H W"],
        prompts: Sequence[str] | str,
        *,
        grad: bool = False,
        check: bool = True,
    ) -> Float[Tensor, "b"]:
        """Score a batch.

        Args:
            images: RGB in [0,1], [b, 3, H, W], any float dtype, any device (moved to the reward's).
            prompts: one prompt per image, or one string for all.
            grad: keep the graph (only for ``differentiable`` rewards).
            check: validate shape, range and prompt count (one host sync).

        Returns:
            fp32 scores [b] on the images' device.
        """
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        if check:
            self.check_inputs(images, prompts)
        if grad and not self.differentiable:
            raise RewardInputError(
                f"reward {self.name!r} is not differentiable; choose a differentiable reward or a method that "
                "only needs reward values"
            )
        src_device = images.device
        x = images.to(self.device)
        if grad:
            scores = self._score(x, list(prompts))
        else:
            with torch.no_grad():
                scores = self._score(x.detach(), list(prompts))
        return scores.float().to(src_device)

    @staticmethod
    def check_inputs(images: Tensor, prompts: Sequence[str]) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise RewardInputError(
                f"images must be a float tensor [B, 3, H, W] in [0, 1], got shape {shape}; "
                "convert with images.permute(0, 3, 1, 2) for channels-last input"
            )
        if not images.is_floating_point():
            raise RewardInputError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}; divide uint8 by 255")
        lo, hi = (float(v) for v in images.detach().aminmax())
        if lo < -1e-4 or hi > 1 + 1e-4 or lo != lo or hi != hi:
            raise RewardInputError(
                f"images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; map [-1,1] images with (x + 1) / 2 "
                "and clamp"
            )
        if len(prompts) != images.shape[0]:
            raise RewardInputError(
                f"got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image or a single string"
            )


def aggregate_views(scores: Float[Tensor, "nb"], n: int, mode: str = "mean") -> Tensor:
    """Reduce per-view scores of n candidates (candidate-major [n * b]) to [n] (``mean``) or [n, b] (``per_view``)."""
    s = scores.view(n, -1)
    if mode == "mean":
        return s.mean(dim=1)
    if mode == "per_view":
        return s
    raise ValueError(f"unknown view aggregation {mode!r}; use 'mean' or 'per_view'")


class NoReward(Reward):
    """Placeholder for runs that never score (strategy=none with no eval metric)."""

    name = "none"
    uses_prompt = False

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return torch.zeros(images.shape[0], device=images.device)


def resize_for(images: Tensor, size: Optional[int]) -> Tensor:
    """Bilinear (antialiased) resize to ``size`` x ``size`` if needed, used by small analytic rewards."""
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
