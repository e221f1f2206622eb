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
lose the worst candidate (this project's generalisation). The pair helpers are shared with PSD (:mod:`rewardsds.losses.preference`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewardsds.candidates import Candidates
from rewardsds.losses.base import LossMode, StepContext, timestep_weight
from rewardsds.losses.config import BelowThreshold, DreamDPOLossConfig, PairRanking
from rewardsds.losses.preference import candidates_needed, pair_logs, preview_and_score, rank_pair
from rewardsds.priors.base import guide


class DreamDPOLoss(LossMode):
    """Pairwise win/lose distillation with a reward-gap threshold (DreamDPO).

    Settings (:class:`~rewardsds.losses.config.DreamDPOLossConfig`): ``guidance_scale`` (CFG of the win branch;
    reference 7.5 with MVDream, 100 for 2D SD), ``lose_guidance_scale`` (1 = the conditional prediction, as the
    reference code), ``weighting`` (w(t)), ``threshold`` (tau; pull/push only where the gap is >= tau, reference
    README 0.01), ``below_threshold`` (``win_sds``: SDS on the win sample, paper; ``win_eps``: the reference code's
    ``w(t) eps_cfg`` without the noise term), ``preview`` (``one_step`` or ``lookahead``), ``preview_guidance`` (CFG
    of the one-step preview; null = guidance_scale), ``ranking`` (``per_view``: each view's own pair, paper and code;
    ``mean``: one pair per step from the rewards averaged over the views), ``grad_clip``.
    """

    weighs_own_candidates = True

    def __init__(self, cfg: DreamDPOLossConfig):
        super().__init__(cfg)

    def candidates(self, step: StepContext) -> Candidates:
        cands = self.engine.draw(step.latents, step.t, candidates_needed(step, "dreamdpo"), step.step)
        cands.eps_cond, cands.eps_uncond = self.engine.predict(cands, step.text, step.camera)
        return cands

    def weigh(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        """+1 on each view's win; -1 on its lose where the gap reaches the threshold (1 for a single candidate)."""
        c, n, b = self.cfg, cands.n, cands.b
        if n == 1:
            return torch.ones(1, b, device=step.latents.device)
        preview_guidance = c.guidance_scale if c.preview_guidance is None else c.preview_guidance
        preview_and_score(self.engine, step, cands, step.text, c.preview, preview_guidance)
        view_rewards = cands.view_rewards  # [n, b]
        pair = rank_pair(view_rewards if c.ranking is PairRanking.per_view else view_rewards.mean(1), b)
        active = pair.gap >= c.threshold
        is_win, is_lose = pair.masks(n)
        cands.extras.update(is_win=is_win, active=active)
        logs.update(pair_logs(pair, active))
        return is_win.float() - (is_lose & active[None]).float()

    def field(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        """The win residual on win cells (or the below-threshold field where the gap is small), the lose residual
        (with ``lose_guidance_scale``) elsewhere; weights say which cells count and with which sign."""
        c = self.cfg
        eps_c, eps_u = cands.eps_cond, cands.eps_uncond
        w = timestep_weight(c.weighting, self.prior.alphas_cumprod[step.t])
        eps = cands.flat_noise()
        with torch.no_grad():
            win_field = w * (guide(eps_c, eps_u, c.guidance_scale) - eps)
            if cands.n == 1:
                return win_field
            is_win, active = cands.extras["is_win"], cands.extras["active"]
            lose_field = w * (guide(eps_c, eps_u, c.lose_guidance_scale) - eps)
            below = win_field if c.below_threshold is BelowThreshold.win_sds else w * guide(eps_c, eps_u, c.guidance_scale)
            shape = (cands.n, cands.b) + (1,) * (win_field.dim() - 1)
            win_cells = (is_win & active[None]).view(shape)
            below_cells = (is_win & ~active[None]).view(shape)
            fields = torch.where(win_cells, cands.per_candidate(win_field),
                                 torch.where(below_cells, cands.per_candidate(below), cands.per_candidate(lose_field)))
            return fields.reshape(win_field.shape)
