"""SDS-Bridge (McAllister et al. 2024) and RewardSDS-Bridge (RewardSDS paper Table 6).

Stage one is plain SDS (RewardSDS with a reward strategy). Stage two replaces the unconditional "source"
of CFG by a text description of the current, degraded image distribution and follows the bridge between
the two conditional predictions (ALGORITHMS.md 3.2):

    g_i = lambda_2 w(t) [eps(x_t^i; y + m_tgt) - eps(x_t^i; y + m_src)]

There is no eps term, so the update has far less variance than SDS. With a reward strategy the candidates'
lookahead uses (y + m_tgt) as cond and (y + m_src) as uncond at the lookahead scale, and the reward scores
the base prompt y (ALGORITHMS.md 3.4); the engine's shared prediction at t is exactly the pair above.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewardsds.losses.base import LossMode, StepContext, timestep_weight
from rewardsds.losses.config import SDSBridgeLossConfig, SDSTarget
from rewardsds.losses.sds import sds_fields
from rewardsds.priors.base import TextCond


class SDSBridgeLoss(LossMode):
    """SDS-Bridge: SDS until ``stage_two_start``, then the bridge between source- and target-prompt predictions.

    Settings (:class:`~rewardsds.losses.config.SDSBridgeLossConfig`): ``guidance_scale`` (stage one's CFG, 2D
    reference 40), ``stage_two_start`` (fraction of the run), ``stage_two_scale`` (lambda_2; null = the CFG scale, as
    the 2D reference multiplies the bridge difference by it; the 3D reference uses 1), ``weighting`` (w(t) of both
    stages), ``source_suffix`` / ``target_suffix`` (appended to each view's prompt), ``grad_clip``.
    """

    def __init__(self, cfg: SDSBridgeLossConfig):
        super().__init__(cfg)

    def stage(self, progress: float) -> int:
        """1 before ``stage_two_start`` (a fraction of the run), 2 from then on."""
        return 2 if progress >= self.cfg.stage_two_start else 1

    def conditioning(self, step: StepContext) -> TextCond:
        """Stage one: the step's prompts. Stage two: (y + m_tgt, y + m_src) of the b (view-dependent) prompts, used as
        (cond, uncond) by the prediction at t and by the lookahead."""
        if self.stage(step.progress) == 1:
            return step.text
        return self.prior.text_cond([p + self.cfg.target_suffix for p in step.prompts],
                                    [p + self.cfg.source_suffix for p in step.prompts])

    def field(self, step: StepContext, cands, logs: dict[str, Tensor]) -> Tensor:
        c = self.cfg
        stage = self.stage(step.progress)
        logs["bridge_stage"] = torch.tensor(float(stage), device=step.latents.device)
        if stage == 1:
            return sds_fields(self.prior, step, cands, cands.eps_cond, cands.eps_uncond, c.guidance_scale, c.weighting,
                              SDSTarget.eps)
        with torch.no_grad():
            w = timestep_weight(c.weighting, self.prior.alphas_cumprod[step.t])
            scale = c.guidance_scale if c.stage_two_scale is None else c.stage_two_scale
            return scale * w * (cands.eps_cond - cands.eps_uncond)
