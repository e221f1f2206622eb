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

from typing import Optional

import torch

from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses, timestep_weight
from rewardsds.losses.sds import SDSLoss
from rewardsds.priors.base import TextCond

#: Source modifier of the 2D reference code: what SDS's current image distribution looks like.
SOURCE_SUFFIX = ", oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
#: Target modifier of the 2D reference code.
TARGET_SUFFIX = ", detailed high resolution, high quality, sharp"


class SDSBridgeLoss(LossMode):
    """SDS-Bridge: SDS until ``stage_two_start``, then the bridge between source- and target-prompt predictions.

    Args:
        guidance_scale: CFG scale of stage one (2D reference: 40).
        stage_two_start: fraction of the run's steps after which stage two starts (2D reference: 0.5).
        stage_two_scale: lambda_2, the scale of the stage-two field; None = ``guidance_scale`` (2D reference,
            which multiplies the bridge difference by the CFG scale; the 3D reference uses 1).
        weighting: w(t) of both stages (``sds``: 1 - abar_t).
        source_suffix: appended to each (view-dependent) prompt to describe the source distribution.
        target_suffix: appended to each prompt to describe the target distribution.
        grad_clip: clamp each field elementwise (None = off).
    """

    name = "sds_bridge"

    def __init__(
        self,
        guidance_scale: float = 40.0,
        stage_two_start: float = 0.5,
        stage_two_scale: Optional[float] = None,
        weighting: str = "sds",
        source_suffix: str = SOURCE_SUFFIX,
        target_suffix: str = TARGET_SUFFIX,
        grad_clip: Optional[float] = None,
    ):
        super().__init__()
        self.guidance_scale = float(guidance_scale)
        self.stage_two_start = float(stage_two_start)
        self.stage_two_scale = float(guidance_scale if stage_two_scale is None else stage_two_scale)
        self.weighting = getattr(weighting, "value", weighting)
        self.source_suffix = str(source_suffix)
        self.target_suffix = str(target_suffix)
        self.grad_clip = grad_clip
        self.stage_one = SDSLoss(guidance_scale=guidance_scale, weighting=weighting, target="eps", grad_clip=grad_clip)

    def stage(self, progress: float) -> int:
        """1 before ``stage_two_start`` (a fraction of the run), 2 from then on."""
        return 2 if progress >= self.stage_two_start else 1

    def bridge_text(self, ctx: StepContext) -> TextCond:
        """(y + m_tgt, y + m_src) for the b (view-dependent) prompts of this step."""
        return ctx.prior.text_cond(
            [p + self.target_suffix for p in ctx.prompts], [p + self.source_suffix for p in ctx.prompts]
        )

    def forward(self, ctx: StepContext) -> LossOutput:
        if self.stage(ctx.progress) == 1:
            out = self.stage_one(ctx)
            out.logs["bridge_stage"] = torch.tensor(1.0, device=ctx.latents.device)
            return out
        cands = ctx.engine.evaluate(
            ctx.latents, ctx.t, ctx.n_noises, ctx.step, self.bridge_text(ctx), ctx.strategy, ctx.reward_prompts,
            ctx.camera, keep_images=ctx.keep_images,
        )
        n, b = cands.n, cands.b
        with torch.no_grad():
            w = timestep_weight(self.weighting, ctx.prior.alphas_cumprod[ctx.t])
            fields = self.stage_two_scale * w * (cands.eps_cond - cands.eps_uncond)
        losses, fields = field_losses(ctx.latents, fields, n, self.grad_clip)
        logs = {
            "grad_norm": combined_field_norm(fields, cands.weights, n, b).detach(),
            "bridge_stage": torch.tensor(2.0, device=ctx.latents.device),
        }
        return LossOutput(candidate_losses=losses, weights=cands.weights, logs=logs, candidates=cands)
