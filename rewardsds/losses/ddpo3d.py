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

from rewardsds.candidates import ddim_transition, gaussian_log_prob, uniform_calls
from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses, timestep_weight
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

    Args:
        guidance_scale: CFG of the SDS term (100 for 2D SD, 50 for MVDream with ``x0_recon``).
        weighting: w(t) of the SDS term (``sds``, ``uniform``, ``fantasia``).
        target: SDS target ``eps`` or ``x0_recon`` (MVDream).
        recon_std_rescale: MVDream's std rescale (``x0_recon`` only).
        grad_clip: elementwise clamp of the SDS field (None = off).
        lambda_sds, lambda_pg: weights of the two terms.
        pg_weighting: timestep weight w_pg(t) of the PG term: ``sds`` (1 - abar_t, as SDS weighs its own
            field), ``uniform`` (1: the plain REINFORCE estimate), ``fantasia``.
        pg_start: fraction of the steps after which the PG term is on (ALGORITHMS.md 6.3 proposes 0.3).
        sds_end: fraction of the steps after which SDS is off (1.0 keeps SDS to the end, against reward hacking).
        sds_noises: ``all`` (SDS averaged over the N start noises: their predictions at t are shared with the
            rollouts, so the lower-variance SDS costs nothing) or ``first`` (candidate 0 only: exactly plain
            SDS's noise). Outside the PG window SDS uses one noise either way.
        estimator: ``noising`` (a) or ``first_transition`` (b).
        rollout_steps: K, DDIM steps of each rollout from t to 0.
        rollout_guidance: CFG of the rollouts (DDPO samples with 5.0; 7.5 proposed).
        eta: rollout stochasticity (1 = DDPO; 0 allowed for ``noising`` only).
        advantage: ``batch`` (over the N rollouts of the step) or ``running`` (DDPO's per-prompt buffer).
        advantage_clip: clip of the normalised advantages.
        buffer_size, min_count: the running buffer (DDPO: 16 and 16).
    """

    name = "ddpo3d"

    def __init__(
        self,
        guidance_scale: float = 100.0,
        weighting: str = "sds",
        target: str = "eps",
        recon_std_rescale: float = 0.5,
        grad_clip: Optional[float] = None,
        lambda_sds: float = 1.0,
        lambda_pg: float = 0.1,
        pg_weighting: str = "sds",
        pg_start: float = 0.3,
        sds_end: float = 1.0,
        sds_noises: str = "all",
        estimator: str = "noising",
        rollout_steps: int = 10,
        rollout_guidance: float = 7.5,
        eta: float = 1.0,
        advantage: str = "batch",
        advantage_clip: float = 5.0,
        buffer_size: int = 16,
        min_count: int = 16,
    ):
        super().__init__()
        self.guidance_scale = float(guidance_scale)
        self.weighting = getattr(weighting, "value", weighting)
        self.target = getattr(target, "value", target)
        self.recon_std_rescale = float(recon_std_rescale)
        self.grad_clip = grad_clip
        self.lambda_sds, self.lambda_pg = float(lambda_sds), float(lambda_pg)
        self.pg_weighting = getattr(pg_weighting, "value", pg_weighting)
        self.pg_start, self.sds_end = float(pg_start), float(sds_end)
        self.sds_noises = getattr(sds_noises, "value", sds_noises)
        self.estimator = getattr(estimator, "value", estimator)
        self.rollout_steps = int(rollout_steps)
        self.rollout_guidance = float(rollout_guidance)
        self.eta = float(eta)
        self.advantage = getattr(advantage, "value", advantage)
        self.advantage_clip = float(advantage_clip)
        if self.rollout_steps < 1:
            raise ConfigError("loss.rollout_steps", rollout_steps, "must be >= 1: the policy gradient needs a rollout",
                              "use 10 (DDPO's default)")
        if self.estimator == "first_transition" and self.eta <= 0:
            raise ConfigError("loss.eta", eta, "must be > 0 with loss.estimator=first_transition (a deterministic "
                              "transition has no log-density)", "use loss.eta=1.0 or loss.estimator=noising")
        self.stats = RunningRewardStats(buffer_size, min_count) if self.advantage == "running" else None

    # ------------------------------------------------------------------ pieces
    def pg_active(self, ctx: StepContext) -> bool:
        return bool(ctx.reward_active and self.lambda_pg > 0 and ctx.progress >= self.pg_start)

    def advantages(self, rewards: Tensor) -> Tensor:
        """Normalised, clipped advantages of rewards [n] or [n, b].

        ``running`` falls back to the batch until the buffer holds ``min_count`` rewards (DDPO); with a single
        rollout that gives zero advantages (no policy gradient) for those first steps.
        """
        if self.stats is not None:
            stats = self.stats.update(rewards)
            if stats is not None:
                return normalise_advantages(rewards, self.advantage_clip, *stats)
            if rewards.shape[0] < 2:
                return torch.zeros_like(rewards, dtype=torch.float32)
        if rewards.shape[0] < 2:
            raise ConfigError("n_noises", rewards.shape[0], "normalising advantages over the rollouts of one step "
                              "needs at least 2 rollouts", "set n_noises>=2 (4 or more recommended), or loss.advantage=running")
        return normalise_advantages(rewards, self.advantage_clip)

    # ------------------------------------------------------------------ the step
    def forward(self, ctx: StepContext) -> LossOutput:
        prior, engine = ctx.prior, ctx.engine
        pg = self.pg_active(ctx)
        n = ctx.n_noises if pg else 1
        cands = engine.draw(ctx.latents, ctx.t, n, ctx.step)
        b = cands.b
        x_grad, grad_pair = None, None
        if pg and self.estimator == "first_transition":
            # One pass with gradient to the model input serves the PG term, SDS and the rollout's first step.
            z = ctx.latents.float()[None].expand(n, *ctx.latents.shape).reshape(cands.noisy.shape)
            x_grad = prior.add_noise(z, cands.flat_noise(), ctx.t)
            grad_pair = engine.predict(cands, ctx.text, ctx.camera, x_t=x_grad, grad=True)
            c, u = grad_pair[0].detach(), grad_pair[1].detach()
        else:
            c, u = engine.predict(cands, ctx.text, ctx.camera)
        cands.eps_cond, cands.eps_uncond = c, u

        fields_sds = sds_fields(ctx, cands, c, u, self.guidance_scale, self.weighting, self.target, self.recon_std_rescale)
        losses, fields_sds = field_losses(ctx.latents, fields_sds, n, self.grad_clip)
        rows = 1 if self.sds_noises == "first" else n
        sds_on = self.lambda_sds > 0 and ctx.progress < self.sds_end
        weights = torch.zeros(n, device=ctx.latents.device)
        if sds_on:
            weights[:rows] = self.lambda_sds / rows
        logs: dict[str, Tensor] = {"grad_norm": combined_field_norm(fields_sds, weights, n, b).detach(),
                                   "pg_active": torch.tensor(float(pg))}
        extra: dict[str, Tensor] = {}
        if pg:
            extra["loss_pg"] = self._policy_gradient(ctx, cands, c, u, x_grad, grad_pair, logs)
        cands.weights = weights
        return LossOutput(candidate_losses=losses, weights=weights, logs=logs, extra=extra, candidates=cands)

    def _policy_gradient(self, ctx: StepContext, cands, c: Tensor, u: Tensor, x_grad: Optional[Tensor],
                         grad_pair: Optional[tuple[Tensor, Tensor]], logs: dict[str, Tensor]) -> Tensor:
        prior, engine = ctx.prior, ctx.engine
        n, b = cands.n, cands.b
        calls = uniform_calls(ctx.t, self.rollout_steps)
        roll = engine.rollout(cands, ctx.text, calls, ctx.step, self.rollout_guidance, self.eta, ctx.camera, first=(c, u))
        images = engine.decode(roll.final)
        cands.view_rewards, cands.rewards = engine.score(images, ctx.reward_prompts, n)
        if ctx.keep_images:
            cands.images = images
        raw = cands.rewards
        adv = self.advantages(raw)
        adv_nb = adv if adv.dim() == 2 else adv[:, None].expand(n, b)
        logs.update({
            "adv_mean": adv.mean().detach(), "adv_std": adv.std(unbiased=False).detach(),
            "adv_abs_max": adv.abs().max().detach(),
            "adv_clip_frac": (adv.abs() >= self.advantage_clip).float().mean().detach(),
            "rollout_steps": torch.tensor(float(len(calls))),
        })
        ac = prior.alphas_cumprod
        scale = self.lambda_pg * timestep_weight(self.pg_weighting, ac[ctx.t])
        if self.estimator == "noising":
            a_t, s_t = prior.alpha_sigma(ctx.t)
            fields = noising_reinforce_field(cands.noise.float(), adv_nb.to(cands.noise.device), a_t, s_t)
            pg_losses, fields = field_losses(ctx.latents, fields.reshape(n * b, *fields.shape[2:]), n)
            uniform = torch.full((n,), 1.0 / n, device=fields.device)
            logs["pg_field_norm"] = combined_field_norm(fields, uniform, n, b).detach()
            return scale / n * pg_losses.sum()
        # (b): the first transition's Gaussian with its mean differentiable in x_t(z)
        nxt = calls[1] if len(calls) > 1 else 0
        mean, _ = ddim_transition(x_grad, guide(*grad_pair, self.rollout_guidance), ac[ctx.t], ac[nxt], self.eta)
        logp = gaussian_log_prob(roll.first_sample, mean, roll.first_std)  # [n * b]
        logs["pg_log_prob"] = (logp.detach() / roll.first_sample[0].numel()).mean()
        return -scale / (n * b) * (adv_nb.reshape(-1).to(logp) * logp).sum()
