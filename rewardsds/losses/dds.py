"""Delta Denoising Score (Hertz et al., ICCV 2023) for image editing, and RewardDDS (RewardSDS paper 4.3).

The source latent z_src (the input image, VAE posterior mean) is fixed and described by the source prompt;
the target latent z (the representation, initialised from the same image) is optimised towards the target
prompt. Both branches share one t and one noise per candidate, so SDS's noise term cancels
(ALGORITHMS.md 4.1):

    g_i = w(t) [eps_cfg(a_t z + s_t eps_i; y_tgt) - eps_cfg(a_t z_src + s_t eps_i; y_src)]

RewardDDS (ALGORITHMS.md 4.2, proposed form): the candidates are ranked by the reward of the *target*
branch's lookahead with the target prompt, and the SAME weights multiply both branches, which keeps the
eps-cancellation that defines DDS (independent per-branch rankings would re-introduce sum (w_i - w'_i) eps_i).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from rewardsds.candidates import CandidateEngine, Candidates
from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, StepContext, timestep_weight
from rewardsds.losses.config import DDSLossConfig
from rewardsds.priors.base import Prior, TextCond, guide
from rewardsds.utils.images import fit_image, load_image
from rewardsds.utils.chunks import call_ranges, rows_per_call


class DDSLoss(LossMode):
    """DDS between the run's prompt (target) and ``source_prompt`` on ``image``; RewardDDS with a strategy.

    Settings (:class:`~rewardsds.losses.config.DDSLossConfig`): ``image`` (the input, encoded with the prior at
    setup, posterior mean, and kept as the buffer ``source_latents``, checkpointed), ``source_prompt`` (describes the
    input; the run's ``prompt`` is the target), ``guidance_scale`` (CFG of both branches; official notebook 7.5),
    ``weighting`` (official notebook: uniform), ``grad_clip``.
    """

    supports_3d = False

    def __init__(self, cfg: DDSLossConfig):
        super().__init__(cfg)
        self.register_buffer("source_latents", None)

    def setup(self, prior: Prior, reward, device: torch.device, total_steps: int, engine: Optional[CandidateEngine] = None) -> None:
        """Encode the input image exactly as ``LatentImage(init=image)`` does, so target and source start equal."""
        super().setup(prior, reward, device, total_steps, engine)
        if self.source_latents is not None:
            return
        img = fit_image(load_image(self.cfg.image, key="loss.image"), prior.image_size, key="loss.image").to(device)
        with torch.no_grad():
            z = prior.encode_images(img).float().cpu()
        self.source_latents = z.to(device)

    def candidates(self, step: StepContext) -> Candidates:
        """The noises at t; the target's prediction at t only where the lookahead needs it (ranked steps): the field
        predicts both branches of the weighted candidates together (:func:`predict_with_branch`)."""
        if step.camera is not None:
            raise ConfigError("loss", "dds", "is an image-editing method and does not support 3D representations",
                              "use representation=latent_image (experiment=edit_dds)")
        cands = self.engine.draw(step.latents, step.t, step.n_noises, step.step)
        if step.ranked:
            cands.eps_cond, cands.eps_uncond = self.engine.predict(cands, self.conditioning(step), step.camera)
        return cands

    def field(self, step: StepContext, cands: Candidates, logs: dict[str, Tensor]) -> Tensor:
        idx = cands.active()
        source_text = self.prior.text_cond([self.cfg.source_prompt] * step.b, step.negative_prompt)
        (c_tgt, u_tgt), (c_src, u_src) = predict_with_branch(self.engine, cands, step.text, self.source_latents, source_text,
                                                             step.camera, idx)
        logs["dds_source_evals"] = torch.tensor(float(2 * cands.flat_index(idx).numel()), device=step.latents.device)
        with torch.no_grad():
            w = timestep_weight(self.cfg.weighting, self.prior.alphas_cumprod[step.t])
            eps_tgt = guide(c_tgt, u_tgt, self.cfg.guidance_scale)
            eps_src = guide(c_src, u_src, self.cfg.guidance_scale)
            return cands.scatter(w * (eps_tgt - eps_src), idx)

    @torch.no_grad()
    def final_outputs(self, prior: Prior, images: Tensor) -> dict[str, Any]:
        """``before_after``: the decoded source latent next to each final image."""
        from rewardsds.viz import side_by_side, to_uint8, upscale

        if self.source_latents is None:
            return {}
        before = to_uint8(prior.decode_latents(self.source_latents[:1]).to(images.device))[0]
        afters = [upscale(a) for a in to_uint8(images)]
        return {"before_after": side_by_side([upscale(before), *afters], labels=["before", *["after"] * len(afters)])}


@torch.no_grad()
def renoise(prior: Prior, cands: Candidates, latents: Float[Tensor, "b c h w"], idx: Optional[Tensor] = None
            ) -> Float[Tensor, "kb c h w"]:
    """Other clean latents noised with the candidates' noises at their t: a second branch of the same step.

    DDS (ALGORITHMS.md 4.1) needs the source image at exactly the noise and t of the target branch, so the eps terms
    cancel.

    Args:
        cands: the step's candidates.
        latents: the second branch's clean latents, [b, c, h, w] or [1, c, h, w] (shared by the b views).
        idx: candidate indices [k] to noise (default: all n).

    Returns:
        x_t of the branch, flat candidate-major [k * b, c, h, w], fp32, no grad.
    """
    noise = cands.noise if idx is None else cands.noise[idx.to(cands.noise.device)]
    k, b = noise.shape[0], cands.b
    z = latents.detach().float()
    if z.shape[0] not in (1, b) or z.shape[1:] != noise.shape[2:]:
        raise ValueError(f"branch latents {tuple(z.shape)} do not match the candidates' views {(b, *noise.shape[2:])}")
    z = z.expand(b, *z.shape[1:])
    flat = z[None].expand(k, *z.shape).reshape(k * b, *z.shape[1:])
    return prior.add_noise(flat, noise.reshape(k * b, *z.shape[1:]), cands.t)


def predict_with_branch(
    engine: CandidateEngine,
    cands: Candidates,
    text: TextCond,
    latents: Float[Tensor, "b c h w"],
    branch_text: TextCond,
    camera: Optional[Tensor] = None,
    idx: Optional[Tensor] = None,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Predictions at t of the candidates ``idx`` and of a second branch (:func:`renoise`), from shared calls.

    A mode that subtracts two branches (DDS) needs each row and its partner in the other branch to go through the
    same computation: with equal inputs (same latents, same prompt) the difference is then exactly zero. Predicted in
    separate calls of different batch sizes, the two can differ by rounding (the kernels' blocking depends on the
    batch), and Adam with a tiny eps turns that noise into full-size steps. So every call holds the same candidate
    rows of both branches side by side, ``[x_a[s:e]; x_b[s:e]]`` (and CFG doubles it), never one branch alone.

    Args:
        cands: the step's candidates; the first branch's x_t is ``cands.noisy``.
        text: conditioning of the first branch's b views.
        latents: the second branch's clean latents, [b, c, h, w] or [1, c, h, w].
        branch_text: conditioning of the second branch's b views.
        camera: c2w [b, 4, 4] for camera-conditioned priors (shared by both branches).
        idx: candidate indices [k] (default: all n), in the returned order.

    Returns:
        ((eps_cond, eps_uncond) of the first branch, (eps_cond, eps_uncond) of the second), fp32 [k * b, c, h, w]
        each. Counts 4 k b evaluations.
    """
    prior = engine.prior
    if idx is None:
        idx = torch.arange(cands.n, device=cands.noise.device)
    x_a = cands.noisy[cands.flat_index(idx)]
    x_b = renoise(prior, cands, latents, idx)
    k = int(idx.numel())
    text_a, text_b = text.repeat(k), branch_text.repeat(k)
    cam = None if camera is None else camera.repeat(k, 1, 1)
    m = x_a.shape[0]
    # a row costs four inputs per call: two branches, each a CFG pair
    per_call = rows_per_call(m, engine.chunk_size(x_a), prior.num_frames, inputs_per_row=4)
    outs: list[tuple[Tensor, ...]] = []
    for s, e in call_ranges(m, per_call):
        pair_text = TextCond(torch.cat([text_a.cond[s:e], text_b.cond[s:e]]), torch.cat([text_a.uncond[s:e], text_b.uncond[s:e]]))
        pair_cam = None if cam is None else torch.cat([cam[s:e], cam[s:e]])
        c, u = prior.predict_noise_pair(torch.cat([x_a[s:e], x_b[s:e]]), cands.t, pair_text, pair_cam)
        outs.append((*c.chunk(2), *u.chunk(2)))
    cands.evals += 4 * m
    c_a, c_b, u_a, u_b = (torch.cat(parts) for parts in zip(*outs))
    return (c_a, u_a), (c_b, u_b)
