"""DreamDPO: pairwise preference distillation (Zhou et al., arXiv 2502.04370; ALGORITHMS.md 8.2).

Per step, two noises at the same t on the same render; each gets a preview (one-step x0 with CFG, or the
engine's DDIM lookahead), decoded and scored by the reward; the higher one is the win w, the other the
lose l. With ``ranking: per_view`` (default) this is decided per view, as the paper and the reference code
do (ALGORITHMS.md 8.2): view v's field pairs the candidate whose preview of view v scores highest with the
one whose preview of view v scores lowest, so in a 3D step the views of one noise can be wins for some views
and loses for others. ``ranking: mean`` ranks whole candidates by their reward averaged over the views
(the run's ``reward_views`` rule does not apply to DreamDPO; this option decides). With one view (2D) both
are the same. With the score gap ``gap = r_w - r_l`` of the view:

    gap >= threshold:  g = w(t) [(eps_cfg(x_t^w) - eps_w) - (eps_lose(x_t^l) - eps_l)]
    gap <  threshold:  g = w(t) (eps_cfg(x_t^w) - eps_w)        (``win_sds``: SDS on the win sample, paper)
                       g = w(t) eps_cfg(x_t^w)                   (``win_eps``: as the reference code writes it)

``eps_lose`` is the prediction with ``lose_guidance_scale``: 1 gives the un-guided conditional
prediction of the reference code. Non-differentiable rewards are fine: the reward only ranks.

With N = 2 this is the closest published relative of RewardSDS; for N > 2 the win is the best and the
lose the worst candidate (this project's generalisation). The pair helpers here are shared with PSD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.candidates import Candidates
from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses, timestep_weight
from rewardsds.priors.base import TextCond, guide


@dataclass
class Pair:
    """The win and lose candidate of each view.

    Attributes:
        win, lose: candidate indices [b] (long).
        gap: reward gap r_win - r_lose >= 0, [b].
        reward_win, reward_lose: [b].
    """

    win: Tensor
    lose: Tensor
    gap: Tensor
    reward_win: Tensor
    reward_lose: Tensor

    def masks(self, n: int) -> tuple[Tensor, Tensor]:
        """Boolean [n, b] masks of the (candidate, view) cells that are the win and the lose."""
        idx = torch.arange(n, device=self.win.device)[:, None]
        return idx == self.win[None], idx == self.lose[None]


def rank_pair(rewards: Float[Tensor, "n *v"], b: int) -> Pair:
    """Win = highest, lose = lowest reward per view (ties: lower index wins, the other loses).

    Args:
        rewards: [n] (one per candidate, shared by its views) or [n, b] (per view), n >= 2.
        b: views per candidate.
    """
    r = (rewards if rewards.dim() == 2 else rewards[:, None].expand(-1, b)).float()
    order = torch.sort(r, dim=0, descending=True, stable=True).indices
    win, lose = order[0], order[-1]
    rw, rl = r.gather(0, win[None])[0], r.gather(0, lose[None])[0]
    return Pair(win=win, lose=lose, gap=rw - rl, reward_win=rw, reward_lose=rl)


def preview_and_score(
    ctx: StepContext, cands: Candidates, text: TextCond, eps_cond: Tensor, eps_uncond: Tensor, preview: str,
    guidance: float,
) -> tuple[Tensor, Tensor]:
    """Score every candidate's preview of x0 and attach rewards (and images) to ``cands``.

    ``one_step``: ``x0 = (x_t - s_t eps_cfg) / a_t`` with CFG ``guidance`` (DreamDPO); ``lookahead``: the
    engine's DDIM lookahead (RewardSDS; its own steps and guidance), reusing the predictions at t.

    Returns:
        (the rewards used for ranking, [n] or [n, b] by the engine's ``reward_views`` rule; the previews
        x0 [n * b, c, h, w]).
    """
    engine = ctx.engine
    with torch.no_grad():
        if preview == "one_step":
            x0 = ctx.prior.predict_x0(cands.noisy, cands.t, guide(eps_cond, eps_uncond, guidance))
        else:
            x0 = engine.lookahead(cands, text, ctx.camera, first=(eps_cond, eps_uncond))
    images = engine.decode(x0)
    cands.view_rewards, cands.rewards = engine.score(images, ctx.reward_prompts, cands.n)
    if ctx.keep_images:
        cands.images = images
    return cands.rewards, x0


def pair_logs(pair: Pair, active: Tensor) -> dict[str, Tensor]:
    return {
        "pair_gap": pair.gap.mean().detach(),
        "pair_active": active.float().mean().detach(),
        "reward_win": pair.reward_win.mean().detach(),
        "reward_lose": pair.reward_lose.mean().detach(),
    }


def candidates_needed(ctx: StepContext, min_pairs: int, loss: str) -> int:
    """Candidates this step: the run's n_noises inside the reward window (checked >= 2), else 1 (plain SDS)."""
    if not ctx.reward_active:
        return 1
    if ctx.n_noises < min_pairs:
        raise ConfigError("n_noises", ctx.n_noises, f"loss={loss} compares a win and a lose candidate and needs at least 2",
                          "set n_noises=2")
    return ctx.n_noises


class DreamDPOLoss(LossMode):
    """Pairwise win/lose distillation with a reward-gap threshold (DreamDPO).

    Args:
        guidance_scale: CFG of the win branch (reference: 7.5 with MVDream; 100 for 2D SD).
        lose_guidance_scale: CFG of the lose branch (1.0 = the conditional prediction, as the reference code).
        weighting: w(t): ``sds`` (1 - abar_t, reference), ``uniform``, ``fantasia``.
        threshold: tau; pull/push only where the gap is >= tau (reference README 0.01; 0 = always).
        below_threshold: ``win_sds`` (SDS on the win sample, paper) or ``win_eps`` (reference code's
            ``w(t) eps_cfg`` without the noise term).
        preview: ``one_step`` (DreamDPO) or ``lookahead`` (the engine's DDIM lookahead).
        preview_guidance: CFG of the one-step preview (None = guidance_scale).
        ranking: ``per_view`` (win and lose of each view from that view's rewards; paper and code) or
            ``mean`` (one win and lose per step from the rewards averaged over the views).
        grad_clip: elementwise clamp of each field (None = off).
    """

    name = "dreamdpo"

    def __init__(
        self,
        guidance_scale: float = 7.5,
        lose_guidance_scale: float = 1.0,
        weighting: str = "sds",
        threshold: float = 0.01,
        below_threshold: str = "win_sds",
        preview: str = "one_step",
        preview_guidance: Optional[float] = None,
        ranking: str = "per_view",
        grad_clip: Optional[float] = None,
    ):
        super().__init__()
        self.ranking = getattr(ranking, "value", ranking)
        if self.ranking not in ("per_view", "mean"):
            raise ConfigError("loss.ranking", self.ranking, "is not a known option", "use per_view (DreamDPO) or mean")
        self.guidance_scale = float(guidance_scale)
        self.lose_guidance_scale = float(lose_guidance_scale)
        self.weighting = getattr(weighting, "value", weighting)
        self.threshold = float(threshold)
        self.below_threshold = getattr(below_threshold, "value", below_threshold)
        self.preview = getattr(preview, "value", preview)
        self.preview_guidance = self.guidance_scale if preview_guidance is None else float(preview_guidance)
        self.grad_clip = grad_clip

    def forward(self, ctx: StepContext) -> LossOutput:
        n = candidates_needed(ctx, 2, self.name)
        engine = ctx.engine
        cands = engine.draw(ctx.latents, ctx.t, n, ctx.step)
        b = cands.b
        c, u = engine.predict(cands, ctx.text, ctx.camera)
        cands.eps_cond, cands.eps_uncond = c, u
        w = timestep_weight(self.weighting, ctx.prior.alphas_cumprod[ctx.t])
        eps = cands.flat_noise()
        with torch.no_grad():
            win_field = w * (guide(c, u, self.guidance_scale) - eps)
        logs: dict[str, Tensor] = {}
        if n == 1:
            fields, weights = win_field, torch.ones(1, b, device=win_field.device)
        else:
            preview_and_score(ctx, cands, ctx.text, c, u, self.preview, self.preview_guidance)
            view_rewards = cands.view_rewards  # [n, b]
            pair = rank_pair(view_rewards if self.ranking == "per_view" else view_rewards.mean(1), b)
            active = pair.gap >= self.threshold
            is_win, is_lose = pair.masks(n)
            with torch.no_grad():
                lose_field = w * (guide(c, u, self.lose_guidance_scale) - eps)
                below = win_field if self.below_threshold == "win_sds" else w * guide(c, u, self.guidance_scale)
            shape = (n, b) + (1,) * (win_field.dim() - 1)
            win_cells = (is_win & active[None]).view(shape)
            below_cells = (is_win & ~active[None]).view(shape)
            fields = torch.where(win_cells, cands.per_candidate(win_field),
                                 torch.where(below_cells, cands.per_candidate(below), cands.per_candidate(lose_field)))
            fields = fields.reshape(win_field.shape)
            weights = is_win.float() - (is_lose & active[None]).float()
            logs.update(pair_logs(pair, active))
        losses, fields = field_losses(ctx.latents, fields, n, self.grad_clip)
        logs["grad_norm"] = combined_field_norm(fields, weights, n, b).detach()
        cands.weights = weights
        return LossOutput(candidate_losses=losses, weights=weights, logs=logs, candidates=cands)
