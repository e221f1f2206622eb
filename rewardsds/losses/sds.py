"""SDS (DreamFusion) and RewardSDS: the candidate engine's weights turn SDS into RewardSDS."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses, timestep_weight
from rewardsds.priors.base import Prior, guide


def x0_recon_target(
    prior: Prior,
    x_t: Tensor,
    t: int,
    eps_cond: Tensor,
    eps_uncond: Tensor,
    guidance_scale: float,
    std_rescale: float,
    group: int,
) -> Tensor:
    """MVDream's x0-reconstruction target with std rescale (ALGORITHMS.md 1.1, MVDREAM.md section 8).

    ``x0 = x0(eps_cfg)``; ``f = (std(x0(eps_cond)) + 1e-8) / (std(x0) + 1e-8)`` per object group of ``group``
    views (unbiased std over views, C, H, W); target = ``r f x0 + (1 - r) x0``. With r = 0 this is SDS with
    w(t) = sigma_t / alpha_t.

    Args:
        x_t, eps_cond, eps_uncond: [m, c, h, w] with m a multiple of ``group``.

    Returns:
        the target [m, c, h, w] (fp32, no grad).
    """
    eps = guide(eps_cond, eps_uncond, guidance_scale)
    x0 = prior.predict_x0(x_t, t, eps)
    if std_rescale == 0:
        return x0
    x0_nc = prior.predict_x0(x_t, t, eps_cond)
    m = x0.shape[0]
    if group < 1 or m % group:
        raise ValueError(f"batch {m} is not a multiple of the view group {group} (prior.num_frames): the x0-recon "
                         "std rescale is taken per object over its consecutive views")
    shape = (m // group, group) + tuple(x0.shape[1:])
    dims = tuple(range(1, len(shape)))
    factor = (x0_nc.reshape(shape).std(dim=dims) + 1e-8) / (x0.reshape(shape).std(dim=dims) + 1e-8)
    factor = factor.repeat_interleave(group).view(m, *([1] * (x0.dim() - 1)))
    return std_rescale * (factor * x0) + (1 - std_rescale) * x0


@torch.no_grad()
def sds_fields(ctx: StepContext, cands, eps_cond: Tensor, eps_uncond: Tensor, guidance_scale: float, weighting: str = "sds",
               target: str = "eps", recon_std_rescale: float = 0.5) -> Tensor:
    """The SDS gradient field of every candidate, [n * b, c, h, w] fp32 (shared by the SDS-family loss modes).

    ``eps``: ``w(t) (eps_cfg - eps_i)``; ``x0_recon``: ``z - target`` with MVDream's std-rescaled x0 target
    (NaN-free), whose gradient through the detached-target trick is the same field.
    """
    if target == "x0_recon":
        tgt = x0_recon_target(ctx.prior, cands.noisy, ctx.t, eps_cond, eps_uncond, guidance_scale, recon_std_rescale,
                              ctx.prior.num_frames)
        z = ctx.latents.detach().float()[None].expand(cands.n, *ctx.latents.shape).reshape(tgt.shape)
        return torch.nan_to_num(z - tgt)
    w = timestep_weight(weighting, ctx.prior.alphas_cumprod[ctx.t])
    return w * (guide(eps_cond, eps_uncond, guidance_scale) - cands.flat_noise())


class SDSLoss(LossMode):
    """Score distillation sampling; with a reward strategy it is RewardSDS (paper Eq. 4).

    Per candidate i: ``g_i = w(t) (eps_cfg(x_t^i) - eps_i)`` (target ``eps``) or the MVDream target
    (``x0_recon``), applied with the detached-target trick; the candidates' weights come from the
    strategy on their lookahead rewards.

    Args:
        guidance_scale: CFG scale (100 for 2D SDS, 50 for MVDream).
        weighting: w(t): ``sds`` (1 - abar_t), ``uniform``, ``fantasia``.
        target: ``eps`` or ``x0_recon``.
        recon_std_rescale: MVDream's std rescale r (x0_recon only).
        grad_clip: clamp each field elementwise (None = off).
    """

    name = "sds"

    def __init__(
        self,
        guidance_scale: float = 100.0,
        weighting: str = "sds",
        target: str = "eps",
        recon_std_rescale: float = 0.5,
        grad_clip: Optional[float] = None,
    ):
        super().__init__()
        self.guidance_scale = float(guidance_scale)
        self.weighting = getattr(weighting, "value", weighting)
        self.target = getattr(target, "value", target)
        self.recon_std_rescale = float(recon_std_rescale)
        self.grad_clip = grad_clip

    def forward(self, ctx: StepContext) -> LossOutput:
        cands = ctx.engine.evaluate(
            ctx.latents, ctx.t, ctx.n_noises, ctx.step, ctx.text, ctx.strategy, ctx.reward_prompts, ctx.camera,
            keep_images=ctx.keep_images,
        )
        n, b = cands.n, cands.b
        fields = sds_fields(ctx, cands, cands.eps_cond, cands.eps_uncond, self.guidance_scale, self.weighting, self.target,
                            self.recon_std_rescale)
        losses, fields = field_losses(ctx.latents, fields, n, self.grad_clip)
        logs = {"grad_norm": combined_field_norm(fields, cands.weights, n, b).detach()}
        return LossOutput(candidate_losses=losses, weights=cands.weights, logs=logs, candidates=cands)
