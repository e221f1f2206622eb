"""The loss-mode interface and the helpers every mode shares.

A loss mode turns one step's context into per-candidate losses and their weights. The system forms

    total = sum_{i,v} weights[i(,v)] * candidate_losses[i, v] + sum of extra ``loss_*`` terms

and back-propagates it into the scene (and into the mode's own trainable state, such as VSD's LoRA or
PSD's negative embedding, whose ``loss_*`` terms are built so that they never reach the scene).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.priors.base import Prior, TextCond
from rewardsds.strategies import Strategy

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.candidates import CandidateEngine, Candidates
    from rewardsds.rewards.base import Reward


@dataclass
class StepContext:
    """Everything a loss mode may read in one step (components never read the trainer or global config).

    Attributes:
        latents: the scene in the prior's space, [b, c, h, w], with gradient to the scene.
        t: the shared diffusion timestep.
        step: optimisation step (0-based); progress = step / total steps.
        text: CFG conditioning of the b views (view-dependent prompts, negative prompt).
        prompts: the b (view-dependent) prompts; base_prompt: the user's prompt (rewards score it).
        negative_prompt: the unconditional branch's prompt.
        camera: c2w [b, 4, 4] or None.
        n_noises: candidates this step (1 after reward_duration).
        strategy: the strategy this step (``none`` after reward_duration).
        engine, prior, reward: shared machinery.
        keep_images: keep decoded candidate images for logging this step.
        reward_active: whether this step is inside the reward window (``reward_duration``); after it the
            system passes n_noises = 1 and strategy ``none``, and reward-driven terms switch off.
    """

    latents: Float[Tensor, "b c h w"]
    t: int
    step: int
    progress: float
    text: TextCond
    prompts: list[str]
    base_prompt: str
    negative_prompt: str
    camera: Optional[Tensor]
    n_noises: int
    strategy: Strategy
    engine: "CandidateEngine"
    prior: Prior
    reward: Optional["Reward"] = None
    keep_images: bool = False
    rgb: Optional[Tensor] = None  # the rendered views [b, 3, H, W] when the scene renders RGB
    reward_active: bool = True

    @property
    def reward_prompts(self) -> list[str]:
        return [self.base_prompt] * self.latents.shape[0]


@dataclass
class LossOutput:
    """What a loss mode returns.

    Attributes:
        candidate_losses: differentiable per-candidate (per-view) losses [n, b].
        weights: strategy weights [n] or [n, b] (constants).
        logs: named scalars (tensors) for ``train/<name>``.
        extra: differentiable auxiliary losses named ``loss_*`` (summed into the total).
        candidates: the evaluated candidates (rewards, images) for logging.
    """

    candidate_losses: Tensor
    weights: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    candidates: Optional["Candidates"] = None

    def total(self) -> Tensor:
        w = self.weights
        if w.dim() == 1 and self.candidate_losses.dim() == 2:
            w = w[:, None]
        main = (w.to(self.candidate_losses) * self.candidate_losses).sum()
        for k, v in self.extra.items():
            if not k.startswith("loss_"):
                raise ValueError(f"extra loss {k!r} must be named loss_*")
            main = main + v
        return main


class LossMode(nn.Module):
    """Base class. Trainable state (LoRA, embeddings) lives in submodules/parameters of the mode, so it
    is checkpointed with the system; frozen models stay in the prior."""

    name: str = "loss"
    #: whether the mode supports 3D representations (DDS is an image-editing method)
    supports_3d: bool = True

    def setup(self, prior: Prior, reward: Optional["Reward"], device: torch.device, total_steps: int) -> None:
        """Build trainable state that depends on the prior (called once before optimisers exist)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra optimiser groups for the mode's own parameters (empty for SDS)."""
        return []

    def forward(self, ctx: StepContext) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def final_outputs(self, prior: Prior, images: Tensor) -> dict[str, Any]:
        """Extra final images of the mode, ``{name: HxWx3 uint8}``, written to ``final/<name>.png`` (DDS: before/after).

        Args:
            images: the run's final images [b, 3, H, W] in [0, 1].
        """
        return {}


def timestep_weight(kind: str, abar: Tensor) -> Tensor:
    """w(t) of the SDS family: ``sds`` 1 - abar (DreamFusion), ``uniform`` 1, ``fantasia`` sqrt(abar)(1 - abar)."""
    kind = getattr(kind, "value", kind)
    if kind == "sds":
        return 1 - abar
    if kind == "uniform":
        return torch.ones_like(abar)
    if kind == "fantasia":
        return abar.sqrt() * (1 - abar)
    raise ValueError(f"unknown weighting {kind!r}")


def detached_target_losses(latents: Tensor, targets: Tensor, n: int) -> Tensor:
    """Per-candidate, per-view ``0.5 |z - sg(target)|^2 / b`` (ALGORITHMS.md 0.1): gradient (z - target)/b.

    Args:
        latents: [b, c, h, w] with gradient.
        targets: [n * b, c, h, w] (candidate-major), treated as constants; NaN/inf are zeroed.

    Returns:
        [n, b] losses.
    """
    b = latents.shape[0]
    tgt = torch.nan_to_num(targets.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).reshape(n, b, *latents.shape[1:])
    diff = latents.float()[None] - tgt
    return 0.5 * diff.pow(2).flatten(2).sum(-1) / b


def field_losses(latents: Tensor, grads: Tensor, n: int, clip: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """Losses whose gradient w.r.t. the latents is ``grad / b`` for each candidate (detached-target trick).

    Args:
        grads: gradient fields [n * b, c, h, w] (e.g. w(t)(eps_hat - eps)); NaN-safe, optionally clamped.

    Returns:
        ([n, b] losses, the cleaned fields [n * b, c, h, w]).
    """
    g = torch.nan_to_num(grads.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        g = g.clamp(-clip, clip)
    z = latents.detach().float()[None].expand(n, *latents.shape).reshape(g.shape)
    return detached_target_losses(latents, z - g, n), g


def combined_field_norm(fields: Tensor, weights: Tensor, n: int, b: int) -> Tensor:
    """|| sum_i w_i g_i || over the scene's latents: the norm of the step's effective gradient field."""
    f = fields.reshape(n, b, -1)
    w = weights if weights.dim() == 2 else weights[:, None].expand(n, b)
    return (w[..., None].to(f) * f).sum(0).norm()
