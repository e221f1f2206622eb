"""SDS (DreamFusion) and RewardSDS: the candidate engine's weights turn SDS into RewardSDS."""

from __future__ import annotations

import torch
from torch import Tensor

from rewardsds.losses.base import LossMode, StepContext, timestep_weight
from rewardsds.losses.config import SDSLossConfig, SDSTarget, SDSWeighting
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
def sds_fields(prior: Prior, step: StepContext, cands, eps_cond: Tensor, eps_uncond: Tensor, guidance_scale: float,
               weighting: SDSWeighting = SDSWeighting.sds, target: SDSTarget = SDSTarget.eps,
               recon_std_rescale: float = 0.5) -> Tensor:
    """The SDS gradient field of every candidate, [n * b, c, h, w] fp32 (shared by the SDS-family loss modes).

    ``eps``: ``w(t) (eps_cfg - eps_i)``; ``x0_recon``: ``z - target`` with MVDream's std-rescaled x0 target
    (NaN-free), whose gradient through the detached-target trick is the same field.
    """
    if SDSTarget(target) is SDSTarget.x0_recon:
        tgt = x0_recon_target(prior, cands.noisy, step.t, eps_cond, eps_uncond, guidance_scale, recon_std_rescale,
                              prior.num_frames)
        z = step.latents.detach().float()[None].expand(cands.n, *step.latents.shape).reshape(tgt.shape)
        return torch.nan_to_num(z - tgt)
    w = timestep_weight(weighting, prior.alphas_cumprod[step.t])
    return w * (guide(eps_cond, eps_uncond, guidance_scale) - cands.flat_noise())


class SDSLoss(LossMode):
    """Score distillation sampling; with a reward strategy it is RewardSDS (paper Eq. 4).

    Per candidate i: ``g_i = w(t) (eps_cfg(x_t^i) - eps_i)`` (target ``eps``) or the MVDream target (``x0_recon``),
    applied with the detached-target trick; the candidates' weights come from the strategy on their lookahead
    rewards. Settings (:class:`~rewardsds.losses.config.SDSLossConfig`): ``guidance_scale`` (100 for 2D SDS, 50 for
    MVDream), ``weighting`` (w(t)), ``target``, ``recon_std_rescale`` (x0_recon only), ``grad_clip``.
    """

    def __init__(self, cfg: SDSLossConfig):
        super().__init__(cfg)

    def field(self, step: StepContext, cands, logs: dict[str, Tensor]) -> Tensor:
        c = self.cfg
        return sds_fields(self.prior, step, cands, cands.eps_cond, cands.eps_uncond, c.guidance_scale, c.weighting, c.target,
                          c.recon_std_rescale)
