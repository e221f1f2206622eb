"""PSD: preference score distillation with a learnable negative text embedding.

Leng et al., "Preference Score Distillation" (arXiv 2603.01594). The paper's equations are not public;
what is known (ALGORITHMS.md 7.1): win/lose noisy pairs from the current render ranked by a 2D reward,
preference folded into a CFG-style guidance through an implicit reward, and a negative text embedding
co-optimised online. Below is this project's formulation (ALGORITHMS.md 7.2), each choice an option of
``conf/loss/psd.yaml``.

With a learnable negative embedding e (initialised from the negative prompt, e0) and
``eps~(x; e) = eps(x; e) + w_cfg (eps(x; y) - eps(x; e))``:

1. Two (or N) noises at t; previews scored by the reward; win w / lose l per view; gap = r_w - r_l.
2. Scene field (preference guidance with reward-gap scaling):
       g = w(t) [(eps~(x_t^w; e) - eps_w) - gamma(gap) (eps~(x_t^l; e) - eps_l)],
       gamma(gap) = lose_scale * min(1, gap / gap_ref) * 1[gap > threshold]   (gap_ref None: no ramp)
3. Negative-embedding loss, on steps past ``negative_start`` whose pair is informative (gap > threshold):
   ``dpo`` (default; any reward, only the ranking is used), Diffusion-DPO on the guided prediction:
       l(x, eps; e) = mean (eps - eps~(x; e))^2,   l_ref: the same with e0,
       L_e = -log sigmoid(-beta [(l_w - l_ref_w) - (l_l - l_ref_l)])
   (beta = 2500 here equals Diffusion-DPO's 5000 with its factor 1/2). The pair (``dpo_pairs``):
   ``previews`` (default): the win and lose previews x0^w, x0^l, re-noised at t with one shared noise,
   as Diffusion-DPO pairs two images; ``candidates``: x_t^w, x_t^l with their own noises (ALGORITHMS.md
   7.2 read literally). Both candidates noise the same render, so in the ``candidates`` form
   ``l = (a_t / s_t)^2 |x0_hat - z|^2`` measures how close each preview stays to the current render:
   DPO then rewards the guided model for predicting the *current* render from the win noise; on the
   analytic prior it raises the preferred mode's weight in the negative branch, so CFG is pushed away
   from what the reward prefers, while ``previews`` lowers it.
   ``reward_feedback`` (needs a differentiable reward): ``L_e = -feedback_weight * R(decode(x0(x_t^w,
   eps~(x_t^w; e))))``. Plus ``anchor_weight * mean((e - e0)^2)`` against drift off the text manifold
   (ALGORITHMS.md 7.3). Gradients reach e only through the eps(x; e) branch (coefficient 1 - w_cfg);
   every model input of e's losses is detached, so they never reach the scene.

e is a parameter of this module (checkpointed as ``loss_mode.negative_embedding``, e0 as
``loss_mode.negative_reference``) and its own group of the system's AdamW. AdamW's update is per
parameter (moments, bias correction and weight decay use only that parameter's gradient and its group's
lr/betas/eps/weight_decay), so a separate group is exactly a separate AdamW optimiser stepped at the same
time. Two couplings remain by design: both share the system's step (skipped together when any gradient
is non-finite) and its logged gradient norm. Steps on which e's loss is off leave e's gradient None, and
AdamW then skips e entirely: e moves only on steps with an informative pair.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.candidates import Candidates
from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, StepContext
from rewardsds.losses.config import DPOPairs, NegativeUpdate, PSDLossConfig
from rewardsds.losses.preference import Pair, candidates_needed, pair_logs, predict_unguided, preview_and_score, rank_pair
from rewardsds.losses.sds import sds_fields
from rewardsds.priors.base import TextCond, guide
from rewardsds.rng import Streams, candidate_noise


def gap_scale(gap: Float[Tensor, "b"], threshold: float, lose_scale: float, gap_ref: Optional[float]) -> Float[Tensor, "b"]:
    """gamma(gap) = lose_scale * min(1, gap / gap_ref) * 1[gap > threshold] (no ramp for gap_ref None)."""
    ramp = torch.ones_like(gap) if gap_ref is None else (gap / gap_ref).clamp(max=1.0)
    return lose_scale * ramp * (gap > threshold).to(gap)


def dpo_loss(
    l_win: Float[Tensor, "p"], l_lose: Float[Tensor, "p"], ref_win: Float[Tensor, "p"], ref_lose: Float[Tensor, "p"],
    beta: float,
) -> Float[Tensor, "p"]:
    """Diffusion-DPO on denoising errors, per pair: ``-log sigmoid(-beta ((l_w - ref_w) - (l_l - ref_l)))``.

    Args:
        l_win, l_lose: mean squared denoising errors of the p pairs with the trained embedding.
        ref_win, ref_lose: the same with the reference (initial) embedding.
    """
    return -F.logsigmoid(-beta * ((l_win - ref_win) - (l_lose - ref_lose)))


class PSDLoss(LossMode):
    """Preference score distillation: win/lose guidance with a co-optimised negative embedding.

    Settings (:class:`~rewardsds.losses.config.PSDLossConfig`): ``guidance_scale`` (w_cfg with the learnable negative;
    7.5 proposed, 100 for 2D SD), ``weighting`` (w(t) of the scene field), ``threshold`` (tau; a pair is informative
    where gap > tau), ``lose_scale`` (gamma_0), ``gap_ref`` (gap at which gamma reaches gamma_0; null: gamma_0 for
    every informative pair), ``preview`` / ``preview_guidance`` (ranking previews, as DreamDPO), ``negative_update``
    (``dpo``, ``reward_feedback`` with a differentiable reward, or ``frozen``), ``negative_init`` (the prompt that
    initialises e; the config sets the run's negative_prompt), ``negative_lr`` / ``negative_betas`` /
    ``negative_eps`` / ``negative_weight_decay`` (e's AdamW group), ``negative_start`` (fraction of the steps before
    which e is not updated), ``dpo_beta``, ``dpo_pairs`` (``previews``: the win/lose previews re-noised with one shared
    noise, as Diffusion-DPO pairs two images; ``candidates``: x_t^w, x_t^l with their own noises), ``feedback_weight``,
    ``anchor_weight`` (of mean((e - e0)^2)), ``grad_clip``.
    """

    weighs_own_candidates = True

    def __init__(self, cfg: PSDLossConfig):
        super().__init__(cfg)
        # Created in setup() from the prior's text encoder, before the optimiser and any checkpoint restore.
        self.register_parameter("negative_embedding", None)
        self.register_buffer("negative_reference", None)

    # ------------------------------------------------------------------ trainable state
    def setup(self, prior, reward, device, total_steps: int, engine=None) -> None:
        super().setup(prior, reward, device, total_steps, engine)
        if self.cfg.negative_update is NegativeUpdate.reward_feedback and (reward is None or not reward.differentiable):
            raise ConfigError("loss.negative_update", "reward_feedback",
                              f"back-propagates the reward into the negative embedding, but {type(reward).__name__} is not "
                              "differentiable", "use loss.negative_update=dpo (works with any reward: it only uses the "
                              "win/lose ranking) or a differentiable reward")
        if self.negative_embedding is not None:
            return
        e0 = prior.encode_text([self.cfg.negative_init]).detach().float().to(device)  # [1, l, d]
        self.negative_reference = e0.clone()
        self.negative_embedding = nn.Parameter(e0.clone(), requires_grad=self.cfg.negative_update is not NegativeUpdate.frozen)

    def param_groups(self) -> list[dict[str, Any]]:
        c = self.cfg
        if self.negative_embedding is None or c.negative_update is NegativeUpdate.frozen:
            return []
        return [{"params": [self.negative_embedding], "lr": c.negative_lr, "betas": tuple(c.negative_betas),
                 "eps": c.negative_eps, "weight_decay": c.negative_weight_decay, "name": "negative_embedding"}]

    def drift(self) -> Tensor:
        """Relative distance ||e - e0|| / ||e0|| (absolute when e0 = 0)."""
        e, e0 = self.negative_embedding.detach(), self.negative_reference
        d, ref = (e - e0).norm(), e0.norm()
        return torch.where(ref > 0, d / ref.clamp_min(1e-12), d)

    # ------------------------------------------------------------------ the step
    def conditioning(self, step: StepContext) -> TextCond:
        """The step's prompts as cond, the (detached) learnable negative embedding as uncond."""
        if self.negative_embedding is None:
            raise RuntimeError("PSDLoss.setup() must run before the first step (the system calls it)")
        e = self.negative_embedding
        return TextCond(step.text.cond, e.detach().to(step.text.cond).expand(step.b, *e.shape[1:]))

    def candidates(self, step: StepContext) -> Candidates:
        cands = self.engine.draw(step.latents, step.t, candidates_needed(step, "psd"), step.step)
        cands.eps_cond, cands.eps_uncond = self.engine.predict(cands, self.conditioning(step), step.camera)
        return cands

    def weigh(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        """+1 on each view's win, -gamma(gap) on its lose (1 for a single candidate)."""
        c, n, b = self.cfg, cands.n, cands.b
        logs["negative_drift"] = self.drift()
        if n == 1:
            return torch.ones(1, b, device=step.latents.device)
        preview_guidance = c.guidance_scale if c.preview_guidance is None else c.preview_guidance
        _, previews = preview_and_score(self.engine, step, cands, self.conditioning(step), c.preview, preview_guidance)
        pair = rank_pair(cands.rewards, b)
        gamma = gap_scale(pair.gap, c.threshold, c.lose_scale, c.gap_ref)
        is_win, is_lose = pair.masks(n)
        active = pair.gap > c.threshold
        cands.extras.update(pair=pair, previews=previews, active=active)
        logs.update(pair_logs(pair, active))
        logs["gamma"] = gamma.mean().detach()
        return is_win.float() - is_lose.float() * gamma[None]

    def field(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        return sds_fields(self.prior, step, cands, cands.eps_cond, cands.eps_uncond, self.cfg.guidance_scale,
                          self.cfg.weighting)

    def aux_losses(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        """e's losses on the informative views (gradient to e only: every model input here is detached)."""
        c = self.cfg
        active = cands.extras.get("active")
        if (cands.n == 1 or c.negative_update is NegativeUpdate.frozen or step.progress < c.negative_start
                or not bool(active.any())):
            return {}
        pair, previews = cands.extras["pair"], cands.extras["previews"]
        b = cands.b
        e = self.negative_embedding
        e_b = e.to(step.text.cond).expand(b, *e.shape[1:])
        views = torch.nonzero(active).flatten().tolist()
        if c.negative_update is NegativeUpdate.reward_feedback:
            loss = self._feedback_loss(step, cands, pair, views, e_b, logs)
        else:
            loss = self._dpo_loss(step, cands, previews, pair, active, views, e_b, logs)
        out = {"loss_negative": loss}
        if c.anchor_weight > 0:
            out["loss_negative_anchor"] = c.anchor_weight * (e - self.negative_reference).pow(2).mean()
        return out

    def _feedback_loss(self, step: StepContext, cands: Candidates, pair: Pair, views: list[int], e_b: Tensor, logs) -> Tensor:
        """-R(decode(x0(x_t^w, eps~(x_t^w; e)))) on the win candidates, back-propagated to e."""
        engine, b = self.engine, cands.b
        needed = sorted(set(int(pair.win[v]) for v in views))
        pos = {i: k for k, i in enumerate(needed)}
        eps_e = predict_unguided(engine, cands, e_b, step.camera, which=needed, grad=True)  # [k * b]
        cond = cands.per_candidate(cands.eps_cond)[needed].reshape(eps_e.shape)
        x_t = cands.per_candidate(cands.noisy)[needed].reshape(eps_e.shape)
        x0 = self.prior.predict_x0(x_t, cands.t, guide(cond, eps_e, self.cfg.guidance_scale))
        rows = [pos[int(pair.win[v])] * b + v for v in views]
        images = engine.decode(x0[rows], grad=True)
        scores, _ = engine.score(images, [step.reward_prompts[v] for v in views], 1, grad=True)
        logs["feedback_reward"] = scores.detach().mean()
        return -self.cfg.feedback_weight * scores.mean()

    def _dpo_loss(self, step: StepContext, cands: Candidates, previews: Tensor, pair: Pair, active: Tensor, views: list[int],
                  e_b: Tensor, logs) -> Tensor:
        """Diffusion-DPO of the guided prediction with e against the same with e0, per informative view."""
        engine, prior, b, c = self.engine, self.prior, cands.b, self.cfg
        eps_cond = cands.eps_cond
        if c.dpo_pairs is DPOPairs.previews:
            # Diffusion-DPO's pair: two clean images (the win and lose previews) noised at the same t with one
            # shared noise; whole view groups are kept so multi-view priors see complete objects.
            shape = previews.shape[1:]
            noise = candidate_noise(1, (b, *shape), engine.seed, step.step, previews.device, Streams.PREFERENCE)[0]
            pv = cands.per_candidate(previews)
            v_idx = torch.arange(b, device=pv.device)
            x0_pair = torch.cat([pv[pair.win.to(pv.device), v_idx], pv[pair.lose.to(pv.device), v_idx]])  # [2b]
            target = noise.float().repeat(2, *([1] * len(shape)))
            x_in = prior.add_noise(x0_pair, target, cands.t)
            which = None
            cond = predict_unguided(engine, cands, step.text.cond, step.camera, x_t=x_in)
            rows_w, rows_l = views, [b + v for v in views]
        else:
            # ALGORITHMS.md 7.2 literally: the noisy candidates themselves, each with its own noise.
            which = sorted(set(pair.win[active].tolist()) | set(pair.lose[active].tolist()))
            pos = {i: k for k, i in enumerate(which)}
            x_in = None
            cond = cands.per_candidate(eps_cond)[which].reshape(-1, *eps_cond.shape[1:])
            target = cands.per_candidate(cands.flat_noise())[which].reshape(cond.shape)
            rows_w = [pos[int(pair.win[v])] * b + v for v in views]
            rows_l = [pos[int(pair.lose[v])] * b + v for v in views]
        eps_e = predict_unguided(engine, cands, e_b, step.camera, which=which, x_t=x_in, grad=True)
        err = (target.float() - guide(cond, eps_e, c.guidance_scale)).pow(2).flatten(1).mean(1)
        with torch.no_grad():
            e0_b = self.negative_reference.to(step.text.cond).expand(b, *e_b.shape[1:])
            ref_u = predict_unguided(engine, cands, e0_b, step.camera, which=which, x_t=x_in)
            ref_err = (target.float() - guide(cond, ref_u, c.guidance_scale)).pow(2).flatten(1).mean(1)
        per_pair = dpo_loss(err[rows_w], err[rows_l], ref_err[rows_w], ref_err[rows_l], c.dpo_beta)
        margin = (err[rows_w] - ref_err[rows_w]) - (err[rows_l] - ref_err[rows_l])
        logs["dpo_margin"] = margin.detach().mean()
        return per_pair.mean()
