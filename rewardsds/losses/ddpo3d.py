"""DDPO3D: SDS plus a policy gradient of a reward on stochastic DDIM rollouts from the noised render.

Mathur et al., "RL Dreams: Policy Gradient Optimization for Score Distillation based 3D Generation"
(arXiv 2312.04806). Only the abstract is public: the method combines DDPO (Black et al. 2023, arXiv
2305.13301) with an aesthetic reward on top of score distillation. Everything below is this project's
interpretation (ALGORITHMS.md 6.3), with every choice exposed in ``conf/loss/ddpo3d.yaml``.

Per step, with the scene's latents z (b views) and the shared timestep t:

    x_t^i = a_t z + s_t eps_i,  i = 1..N                         (N start noises, no grad)
    rollout: stochastic DDIM (eta = 1) in K steps x_t^i -> x_0^i  (CFG rollout_guidance; DDPO's policy)
    r_i = reward(decode(x_0^i))                                  (views averaged by reward_views)
    A_i = clip((r_i - mean) / (std + 1e-6), -c, c)                (batch over N, or a running buffer)
    L = lambda_sds L_SDS + lambda_pg L_PG

The diffusion model is frozen, so the policy gradient can reach the scene only through the chain's
start x_t(z). Two estimators of grad_z E[r]:

(a) ``noising`` (default): the forward noising q(x_t | z) = N(a_t z, s_t^2 I) is the stochastic action;
    grad_z log q = (a_t / s_t) eps_i, so the gradient field is ``g = -(1/N) sum_i A_i (a_t / s_t) eps_i``,
    applied with the detached-target trick. No backward through the model.
(b) ``first_transition``: ``L_PG = -(1/N) sum_i A_i log pi(x_{t_1}^i | x_t^i(z))`` with the first rollout
    transition's Gaussian (mean from a model call with gradient to its input, std and sample as drawn).
    One update per rollout makes DDPO's importance ratio 1, so its PPO clipping is inactive and not
    implemented.

Both use log-densities summed over elements and divided by the b views, like the SDS field, so
``lambda_pg`` means the same for both. Both are multiplied by a timestep weight w_pg(t), by default
SDS's 1 - abar_t (``pg_weighting``): the score-function field (a_t / s_t) eps grows without bound as
t -> 0, where the rollouts barely differ and the normalised advantages are mostly noise; weighting it
as SDS weighs its own 1 / s_t score term keeps the two fields comparable across t. On the analytic
prior the unweighted field (``uniform``, the plain estimator) leaves visible noise in the final images.

The PG term starts at ``pg_start`` (fraction of steps) and stops with the run's reward window
(``reward_duration``); SDS stays until ``sds_end`` (the end by default). Both estimators are
score-function estimates over D-dimensional noise, so their signal-to-noise ratio falls like sqrt(N / D):
use many rollouts where the budget allows.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds import ddim
from rewardsds.candidates import Candidates
from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, StepContext, combined_field_norm, field_losses, timestep_weight
from rewardsds.losses.config import AdvantageNorm, DDPO3DLossConfig, PGEstimator, SDSNoises
from rewardsds.losses.sds import sds_fields
from rewardsds.priors.base import guide


def noising_reinforce_field(
    noise: Float[Tensor, "n b c h w"], advantages: Float[Tensor, "n b"], alpha: Tensor, sigma: Tensor
) -> Float[Tensor, "n b c h w"]:
    """Per-candidate fields of estimator (a): ``-A_i grad_z log q(x_t^i | z) = -A_i (alpha / sigma) eps_i``.

    Their mean over candidates is a score-function (REINFORCE) estimate of ``-grad_z E_eps[r(alpha z + sigma eps)]``.
    """
    return -(advantages[..., None, None, None] * (alpha / sigma)) * noise


def normalise_advantages(
    rewards: Float[Tensor, "n *v"], clip: float, mean: Optional[Tensor] = None, std: Optional[Tensor] = None,
    eps: float = 1e-6,
) -> Tensor:
    """``clip((r - mean) / (std + eps), -clip, clip)``; without given statistics, over the candidates (dim 0,
    per view column for [n, b] rewards) with the population std, as DDPO."""
    r = rewards.float()
    if mean is None or std is None:
        mean, std = r.mean(0, keepdim=True), r.std(0, unbiased=False, keepdim=True)
    return ((r - mean) / (std + eps)).clamp(-clip, clip)


class RunningRewardStats(nn.Module):
    """DDPO's per-prompt statistics tracker as checkpointed buffers (a run optimises one prompt).

    Keeps the last ``size`` rewards; ``update`` adds a batch and returns the buffer's (mean, std) once it
    holds ``min_count`` values, else None (the caller then normalises over the batch, as DDPO does).
    """

    def __init__(self, size: int = 16, min_count: int = 16):
        super().__init__()
        self.size, self.min_count = int(size), int(min_count)
        self.register_buffer("values", torch.zeros(self.size))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, rewards: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        r = rewards.detach().float().flatten().to(self.values.device)
        start = int(self.count)
        pos = (torch.arange(r.numel(), device=r.device) + start) % self.size
        self.values[pos] = r  # later entries win when a batch is larger than the buffer
        self.count += r.numel()
        held = min(int(self.count), self.size)
        if held < self.min_count:
            return None
        v = self.values[:held]
        return v.mean(), v.std(unbiased=False)


class DDPO3DLoss(LossMode):
    """SDS plus a DDPO-style policy gradient that reaches the scene through the rollout's start.

    Settings (:class:`~rewardsds.losses.config.DDPO3DLossConfig`): ``guidance_scale``, ``weighting``, ``target``,
    ``recon_std_rescale``, ``grad_clip`` (the SDS term, as :class:`~rewardsds.losses.sds.SDSLoss`); ``lambda_sds``,
    ``lambda_pg`` (the two terms' weights); ``pg_weighting`` (timestep weight w_pg(t) of the PG term: ``sds`` =
    1 - abar_t as SDS weighs its own field, ``uniform`` = the plain REINFORCE estimate); ``pg_start`` (fraction of the
    steps after which the PG term is on, ALGORITHMS.md 6.3 proposes 0.3); ``sds_end`` (fraction after which SDS is
    off; 1.0 keeps it, against reward hacking); ``sds_noises`` (``all``: SDS averaged over the N start noises, whose
    predictions at t the rollouts share, so it costs nothing; ``first``: candidate 0 only, exactly plain SDS's noise;
    outside the PG window SDS uses one noise either way); ``estimator`` (``noising`` (a) or ``first_transition``
    (b)); ``rollout_steps`` (K); ``rollout_guidance`` (DDPO samples with 5.0; 7.5 proposed); ``eta`` (1 = DDPO);
    ``advantage`` (``batch`` over the step's N rollouts, or ``running``: DDPO's per-prompt buffer of
    ``buffer_size`` rewards, used once it holds ``min_count``); ``advantage_clip``.
    """

    weighs_own_candidates = True

    def __init__(self, cfg: DDPO3DLossConfig):
        super().__init__(cfg)
        self.stats = RunningRewardStats(cfg.buffer_size, cfg.min_count) if cfg.advantage is AdvantageNorm.running else None

    # ------------------------------------------------------------------ pieces
    def pg_active(self, step: StepContext) -> bool:
        return bool(step.reward_active and self.cfg.lambda_pg > 0 and step.progress >= self.cfg.pg_start)

    def advantages(self, rewards: Tensor) -> Tensor:
        """Normalised, clipped advantages of rewards [n] or [n, b].

        ``running`` falls back to the batch until the buffer holds ``min_count`` rewards (DDPO); with a single
        rollout that gives zero advantages (no policy gradient) for those first steps.
        """
        clip = self.cfg.advantage_clip
        if self.stats is not None:
            stats = self.stats.update(rewards)
            if stats is not None:
                return normalise_advantages(rewards, clip, *stats)
            if rewards.shape[0] < 2:
                return torch.zeros_like(rewards, dtype=torch.float32)
        if rewards.shape[0] < 2:
            raise ConfigError("n_noises", rewards.shape[0], "normalising advantages over the rollouts of one step "
                              "needs at least 2 rollouts", "set n_noises>=2 (4 or more recommended), or loss.advantage=running")
        return normalise_advantages(rewards, clip)

    # ------------------------------------------------------------------ the step
    def candidates(self, step: StepContext) -> Candidates:
        """N start noises inside the PG window (one outside it) and their prediction at t; with the first-transition
        estimator that prediction is made with gradient to its input x_t(z) (kept for the PG term)."""
        engine = self.engine
        n = step.n_noises if self.pg_active(step) else 1
        cands = engine.draw(step.latents, step.t, n, step.step)
        if self.pg_active(step) and self.cfg.estimator is PGEstimator.first_transition:
            # One pass with gradient to the model input serves the PG term, SDS and the rollout's first step.
            z = step.latents.float()[None].expand(n, *step.latents.shape).reshape(cands.noisy.shape)
            x_grad = self.prior.add_noise(z, cands.flat_noise(), step.t)
            grad_pair = engine.predict(cands, step.text, step.camera, x_t=x_grad, grad=True)
            cands.extras.update(x_grad=x_grad, grad_pair=grad_pair)
            cands.eps_cond, cands.eps_uncond = grad_pair[0].detach(), grad_pair[1].detach()
        else:
            cands.eps_cond, cands.eps_uncond = engine.predict(cands, step.text, step.camera)
        return cands

    def weigh(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        """``lambda_sds`` spread over the SDS rows (all N, or the first), zero once SDS is off."""
        n = cands.n
        rows = 1 if self.cfg.sds_noises is SDSNoises.first else n
        weights = torch.zeros(n, device=step.latents.device)
        if self.cfg.lambda_sds > 0 and step.progress < self.cfg.sds_end:
            weights[:rows] = self.cfg.lambda_sds / rows
        logs["pg_active"] = torch.tensor(float(self.pg_active(step)))
        return weights

    def field(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        c = self.cfg
        return sds_fields(self.prior, step, cands, cands.eps_cond, cands.eps_uncond, c.guidance_scale, c.weighting, c.target,
                          c.recon_std_rescale)

    def aux_losses(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.pg_active(step):
            return {}
        return {"loss_pg": self._policy_gradient(step, cands, logs)}

    def _policy_gradient(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        prior, engine, c = self.prior, self.engine, self.cfg
        n, b = cands.n, cands.b
        calls = ddim.uniform_calls(step.t, c.rollout_steps)
        roll = engine.rollout(cands, step.text, calls, step.step, c.rollout_guidance, c.eta, step.camera,
                              first=(cands.eps_cond, cands.eps_uncond))
        images = engine.decode(roll.final)
        cands.view_rewards, cands.rewards = engine.score(images, step.reward_prompts, n)
        if step.keep_images:
            cands.images = images
        adv = self.advantages(cands.rewards)
        adv_nb = adv if adv.dim() == 2 else adv[:, None].expand(n, b)
        logs.update({
            "adv_mean": adv.mean().detach(), "adv_std": adv.std(unbiased=False).detach(),
            "adv_abs_max": adv.abs().max().detach(),
            "adv_clip_frac": (adv.abs() >= c.advantage_clip).float().mean().detach(),
            "rollout_steps": torch.tensor(float(len(calls))),
        })
        ac = prior.alphas_cumprod
        scale = c.lambda_pg * timestep_weight(c.pg_weighting, ac[step.t])
        if c.estimator is PGEstimator.noising:
            a_t, s_t = prior.alpha_sigma(step.t)
            fields = noising_reinforce_field(cands.noise.float(), adv_nb.to(cands.noise.device), a_t, s_t)
            pg_losses, fields = field_losses(step.latents, fields.reshape(n * b, *fields.shape[2:]), n)
            uniform = torch.full((n,), 1.0 / n, device=fields.device)
            logs["pg_field_norm"] = combined_field_norm(fields, uniform, n, b).detach()
            return scale / n * pg_losses.sum()
        # (b): the first transition's Gaussian with its mean differentiable in x_t(z)
        x_grad, grad_pair = cands.extras["x_grad"], cands.extras["grad_pair"]
        nxt = calls[1] if len(calls) > 1 else 0
        mean, _ = ddim.step(x_grad, guide(*grad_pair, c.rollout_guidance), ac[step.t], ac[nxt], c.eta)
        logp = ddim.gaussian_log_prob(roll.first_sample, mean, roll.first_std)  # [n * b]
        logs["pg_log_prob"] = (logp.detach() / roll.first_sample[0].numel()).mean()
        return -scale / (n * b) * (adv_nb.reshape(-1).to(logp) * logp).sum()
