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
from torch import Tensor

from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses, timestep_weight
from rewardsds.priors.base import Prior, guide
from rewardsds.utils.images import fit_image, load_image


class DDSLoss(LossMode):
    """DDS editing; with a reward strategy it is RewardDDS.

    Args:
        image: path of the input (source) image; encoded with the prior at setup (posterior mean) and kept
            as the buffer ``source_latents`` (checkpointed).
        source_prompt: a description of the input image (the run's ``prompt`` is the target).
        guidance_scale: CFG scale of BOTH branches (official notebook: 7.5).
        weighting: w(t) (official notebook: ``uniform``, w = 1).
        grad_clip: clamp each field elementwise (None = off).
    """

    name = "dds"
    supports_3d = False

    def __init__(
        self,
        image: Optional[str] = None,
        source_prompt: Optional[str] = None,
        guidance_scale: float = 7.5,
        weighting: str = "uniform",
        grad_clip: Optional[float] = None,
    ):
        super().__init__()
        if not image:
            raise ConfigError("loss.image", image, "DDS edits an input image and none is given",
                              "set loss.image=/path/to/photo.png (experiment=edit_dds also starts the target from it)")
        if not source_prompt or not str(source_prompt).strip():
            raise ConfigError("loss.source_prompt", source_prompt, "DDS needs a description of the input image",
                              'set loss.source_prompt="a photo of a cat" (the run\'s prompt is the edit target)')
        self.image = str(image)
        self.source_prompt = str(source_prompt)
        self.guidance_scale = float(guidance_scale)
        self.weighting = getattr(weighting, "value", weighting)
        self.grad_clip = grad_clip
        self.register_buffer("source_latents", None)

    def setup(self, prior: Prior, reward, device: torch.device, total_steps: int) -> None:
        """Encode the input image exactly as ``LatentImage(init=image)`` does, so target and source start equal."""
        if self.source_latents is not None:
            return
        img = fit_image(load_image(self.image, key="loss.image"), prior.image_size, key="loss.image").to(device)
        with torch.no_grad():
            z = prior.encode_images(img).float().cpu()
        self.source_latents = z.to(device)

    def forward(self, ctx: StepContext) -> LossOutput:
        if ctx.camera is not None:
            raise ConfigError("loss", "dds", "is an image-editing method and does not support 3D representations",
                              "use representation=latent_image (experiment=edit_dds)")
        if self.source_latents is None:
            raise RuntimeError("DDSLoss.setup(prior, ...) must run before the first step")
        b = ctx.latents.shape[0]
        # The target's prediction at t is computed here only when the strategy's lookahead needs it; the field
        # takes both branches from the same calls, so equal prompts and images cancel exactly (no rounding noise).
        cands = ctx.engine.evaluate(
            ctx.latents, ctx.t, ctx.n_noises, ctx.step, ctx.text, ctx.strategy, ctx.reward_prompts, ctx.camera,
            keep_images=ctx.keep_images, predict=False,
        )
        n = cands.n
        idx = cands.active()
        rows = cands.flat_index(idx)
        source_text = ctx.prior.text_cond([self.source_prompt] * b, ctx.negative_prompt)
        (c_tgt, u_tgt), (c_src, u_src) = ctx.engine.predict_with_branch(
            cands, ctx.text, self.source_latents, source_text, ctx.camera, idx
        )
        with torch.no_grad():
            w = timestep_weight(self.weighting, ctx.prior.alphas_cumprod[ctx.t])
            eps_tgt = guide(c_tgt, u_tgt, self.guidance_scale)
            eps_src = guide(c_src, u_src, self.guidance_scale)
            fields = cands.scatter(w * (eps_tgt - eps_src), idx)
        losses, fields = field_losses(ctx.latents, fields, n, self.grad_clip)
        logs = {
            "grad_norm": combined_field_norm(fields, cands.weights, n, b).detach(),
            "dds_source_evals": torch.tensor(float(2 * rows.numel()), device=ctx.latents.device),
        }
        return LossOutput(candidate_losses=losses, weights=cands.weights, logs=logs, candidates=cands)

    @torch.no_grad()
    def final_outputs(self, prior: Prior, images: Tensor) -> dict[str, Any]:
        """``before_after``: the decoded source latent next to each final image."""
        from rewardsds.viz import side_by_side, to_uint8, upscale

        if self.source_latents is None:
            return {}
        before = to_uint8(prior.decode_latents(self.source_latents[:1]).to(images.device))[0]
        afters = [upscale(a) for a in to_uint8(images)]
        return {"before_after": side_by_side([upscale(before), *afters], labels=["before", *["after"] * len(afters)])}
