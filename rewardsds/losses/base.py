"""The loss-mode interface: the hooks the training step calls, and the helpers every mode shares.

The system's step (``DistillationSystem.run_step``) is the algorithm; a loss mode fills in its parts:

    cands = mode.candidates(step)            N noises at t and the prediction at t (under mode.conditioning(step))
    weights: the strategy on the lookahead rewards (``step.ranked``), or mode.weigh(step, cands) for modes that
             weigh their own candidates (DDPO3D, DreamDPO, PSD), else 1/N
    fields = mode.field(step, cands)         per-candidate gradient fields [n * b, c, h, w]
    total  = sum_{i,v} w[i(,v)] * 0.5 |z - sg(z - g_i)|^2 / b  +  mode.aux_losses(step, cands)  (named ``loss_*``)

The aux losses carry the mode's own trainable state (VSD's LoRA, PSD's negative embedding) or terms that are not a
field on the scene (DDPO3D's policy gradient); those built on the mode's state never reach the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.losses.config import SDSWeighting
from rewardsds.priors.base import Prior, TextCond

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.candidates import CandidateEngine, Candidates
    from rewardsds.rewards.base import Reward


@dataclass
class StepContext:
    """The data of one step (what a loss mode may read; the services it uses were given to it at setup).

    Attributes:
        latents: the scene in the prior's space, [b, c, h, w], with gradient to the scene.
        t: the shared diffusion timestep.
        step: optimisation step (0-based); progress = step / total steps.
        text: CFG conditioning of the b views (view-dependent prompts, negative prompt).
        prompts: the b (view-dependent) prompts; base_prompt: the user's prompt (rewards score it).
        negative_prompt: the unconditional branch's prompt.
        camera: c2w [b, 4, 4] or None.
        reward_active: whether this step is inside the reward window (``reward_duration``): the one place that says
            so. Outside it a step is plain distillation with one candidate.
        n_noises: candidates this step (the run's N inside the reward window, else 1).
        ranked: whether the candidates get strategy weights from lookahead rewards this step (reward window, more
            than one candidate, a strategy that uses rewards, a loss mode that does not weigh its own candidates).
        keep_images: keep decoded candidate images for logging this step.
        rgb: the rendered views [b, 3, H, W] when the scene renders RGB.
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
    reward_active: bool
    n_noises: int
    ranked: bool
    keep_images: bool = False
    rgb: Optional[Tensor] = None

    @property
    def reward_prompts(self) -> list[str]:
        return [self.base_prompt] * self.latents.shape[0]

    @property
    def b(self) -> int:
        return self.latents.shape[0]


@dataclass
class LossOutput:
    """What one step's loss is made of (for the backward pass and for logging).

    Attributes:
        candidate_losses: differentiable per-candidate (per-view) losses [n, b].
        weights: candidate weights [n] or [n, b] (constants).
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
    """Base class of the loss modes. Trainable state (LoRA, embeddings) lives in submodules/parameters of the mode,
    so it is checkpointed with the system; the frozen prior, the reward and the candidate engine are set by
    :meth:`setup` as plain attributes (never registered, never checkpointed).

    Attributes:
        weighs_own_candidates: the mode decides its candidates' weights itself (:meth:`weigh`); no strategy applies.
        supports_3d: whether the mode supports 3D representations (DDS is an image-editing method).
    """

    weighs_own_candidates: bool = False
    supports_3d: bool = True

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.prior: Optional[Prior] = None
        self.reward: Optional["Reward"] = None
        self.engine: Optional["CandidateEngine"] = None

    def setup(self, prior: Prior, reward: Optional["Reward"], device: torch.device, total_steps: int,
              engine: Optional["CandidateEngine"] = None) -> None:
        """Keep the run's services (the prior, the reward, the step's candidate engine) and build trainable state that
        depends on the prior (once, before the optimiser)."""
        object.__setattr__(self, "prior", prior)  # plain attributes, not submodules: frozen models stay out of state
        object.__setattr__(self, "reward", reward)
        object.__setattr__(self, "engine", engine)

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra optimiser groups for the mode's own parameters (empty for SDS)."""
        return []

    @property
    def grad_clip(self) -> Optional[float]:
        return getattr(self.cfg, "grad_clip", None)

    # ------------------------------------------------------------------ the hooks of a step
    def conditioning(self, step: StepContext) -> TextCond:
        """The (cond, uncond) text of the prediction at t and of the lookahead (default: the step's prompts)."""
        return step.text

    def candidates(self, step: StepContext) -> "Candidates":
        """The step's N candidates: noises at t and the prediction at t (one batched call)."""
        cands = self.engine.draw(step.latents, step.t, step.n_noises, step.step)
        cands.eps_cond, cands.eps_uncond = self.engine.predict(cands, self.conditioning(step), step.camera)
        return cands

    def weigh(self, step: StepContext, cands: "Candidates", logs: dict[str, Tensor]) -> Tensor:
        """Weights of a mode that weighs its own candidates (``weighs_own_candidates``), [n] or [n, b]."""
        raise NotImplementedError(f"{type(self).__name__} does not weigh its own candidates")

    def field(self, step: StepContext, cands: "Candidates", logs: dict[str, Tensor]) -> Tensor:  # pragma: no cover
        """Each candidate's gradient field on the scene's latents, [n * b, c, h, w] (no graph)."""
        raise NotImplementedError

    def aux_losses(self, step: StepContext, cands: "Candidates", logs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Differentiable auxiliary losses named ``loss_*``, summed into the step's total."""
        return {}

    def final_outputs(self, prior: Prior, images: Tensor) -> dict[str, Any]:
        """Extra final images of the mode, ``{name: HxWx3 uint8}``, written to ``final/<name>.png`` (DDS: before/after).

        Args:
            images: the run's final images [b, 3, H, W] in [0, 1].
        """
        return {}


def timestep_weight(kind: SDSWeighting, abar: Tensor) -> Tensor:
    """w(t) of the SDS family: ``sds`` 1 - abar (DreamFusion), ``uniform`` 1, ``fantasia`` sqrt(abar)(1 - abar)."""
    kind = SDSWeighting(kind)
    if kind is SDSWeighting.sds:
        return 1 - abar
    if kind is SDSWeighting.uniform:
        return torch.ones_like(abar)
    return abar.sqrt() * (1 - abar)


def uniform_weights(n: int, device: torch.device) -> Tensor:
    """1/n for each of n candidates (plain distillation; n = 1 is SDS)."""
    return torch.full((n,), 1.0 / n, device=device)


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
