"""Variational score distillation (ProlificDreamer) and RewardVSD (RewardSDS paper Eq. 5).

A LoRA copy of the prior's UNet models the distribution of the current renders. Per candidate i
(ALGORITHMS.md 2.1, 2.3):

    g_i = w(t) [eps_cfg_pretrained(x_t^i; y) - eps_lora(x_t^i; y, c)]           (no eps term)

and the LoRA (plus its camera embedding) is trained with the plain diffusion loss on the DETACHED current
render at a fresh t' ~ U{0, ..., T-1}:

    L_lora = mean |pred_lora(a_t' sg(z) + s_t' eps'; y, c, t') - target|^2,   target = eps' or v

Both terms are built so that neither reaches the other's parameters: the VSD field is a constant (detached-
target trick) and L_lora sees only sg(z). With a reward strategy the candidates are weighted exactly as in
RewardSDS (the pretrained prediction at t is the engine's shared one) and the LoRA is evaluated only where a
weight is non-zero; the LoRA's training ignores the rewards.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, LossOutput, StepContext, combined_field_norm, field_losses, timestep_weight
from rewardsds.priors.base import Prior, guide
from rewardsds.schedules import Streams, seed_for

#: Attention projections that get LoRA layers: every attention processor, as the reference's LoRAAttnProcessor.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: Camera condition: the flattened 4x4 c2w matrix (all zero in 2D).
CAMERA_DIM = 16


class LoRAUNet(nn.Module):
    """A frozen UNet with LoRA adapters and a camera class embedding; only those two are registered.

    The base UNet is held outside module registration, so its weights never enter ``state_dict``, an
    optimiser, or ``.to()`` of a parent module (it is moved here, at construction). The LoRA layers that
    peft injects into it are registered under ``lora`` (names with ``.`` replaced by ``__``), and the camera
    embedding ``TimestepEmbedding(16 -> time-embed dim)`` is set as the UNet's class embedding, as in the
    reference, and registered as ``camera_embedding``. Trainable tensors are fp32; the base keeps its dtype.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` that shares no tensor with the prior (frozen here).
        rank: LoRA rank (alpha = rank, i.e. scale 1, and Gaussian init with std 1/rank as the reference).
        prediction_type: ``epsilon`` or ``v_prediction`` (the base's training target).
        channels_last: feed inputs in channels-last format on CUDA (as the prior does).
    """

    def __init__(self, unet: nn.Module, rank: int = 4, prediction_type: str = "epsilon", channels_last: bool = True):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        unet.requires_grad_(False)
        unet.eval()
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
        self.lora = nn.ModuleDict()
        for name, module in unet.named_modules():
            if isinstance(module, LoraLayer):
                self.lora[name.replace(".", "__")] = nn.ModuleDict({"A": module.lora_A, "B": module.lora_B})
        if not len(self.lora):
            raise ValueError("no attention projection (to_q/to_k/to_v/to_out.0) found for LoRA in this UNet")
        device = next(unet.parameters()).device
        self.lora.to(device=device, dtype=torch.float32)  # trainable state in fp32; peft casts activations per layer
        time_dim = int(unet.time_embedding.linear_2.out_features)
        self.camera_embedding = TimestepEmbedding(CAMERA_DIM, time_dim).to(device)
        unet.class_embedding = self.camera_embedding  # diffusers adds it to the time embedding (class_embed_type None)
        self._base = (unet,)
        self.prediction_type = prediction_type
        self.channels_last = bool(channels_last)

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def raw(
        self, x_t: Float[Tensor, "m c h w"], t: Int[Tensor, "m"], text: Float[Tensor, "m l d"], camera: Float[Tensor, "m 16"]
    ) -> Float[Tensor, "m c h w"]:
        """The UNet's raw output (eps or v by ``prediction_type``), fp32 [m, c, h, w]; differentiable in the LoRA.

        Args:
            x_t: [m, c, h, w]; t: [m] integer timesteps; text: [m, l, d]; camera: [m, 16] flattened c2w.
        """
        x = x_t.to(self.dtype)
        if x.device.type == "cuda" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.base(x, t.to(x.device), encoder_hidden_states=text.to(self.dtype), class_labels=camera.float())
        return out.sample.float()

    def eps(
        self, x_t: Float[Tensor, "m c h w"], t: Int[Tensor, "m"], text: Float[Tensor, "m l d"], camera: Float[Tensor, "m 16"],
        alphas_cumprod: Float[Tensor, "T"],
    ) -> Float[Tensor, "m c h w"]:
        """Epsilon prediction in fp32 (v converted: eps = a v + s x_t)."""
        out = self.raw(x_t, t, text, camera)
        if self.prediction_type == "v_prediction":
            a = alphas_cumprod[t.to(alphas_cumprod.device).long()].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t.float()
        return out


def camera_condition(camera: Optional[Float[Tensor, "b 4 4"]], b: int, device: torch.device) -> Float[Tensor, "b 16"]:
    """The LoRA's class input: flattened c2w [b, 16] (fp32), or zeros without cameras (2D)."""
    if camera is None:
        return torch.zeros(b, CAMERA_DIM, device=device)
    return camera.reshape(b, CAMERA_DIM).float().to(device)


def lora_training_draws(seed: int, step: int, b: int, shape: Sequence[int], T: int, drop_p: float, device) -> tuple[Tensor, Tensor, bool]:
    """(t' [b] ~ U{0..T-1}, eps' [b, c, h, w], drop camera?) of one LoRA step, from the run seed and step only.

    Keyed on (seed, step) so a resumed run trains the LoRA on exactly the draws of an uninterrupted one.
    """
    from rewardsds.candidates import seeded_randn

    g = torch.Generator().manual_seed(seed_for(seed, step, Streams.LORA, 0))
    t = torch.randint(0, T, (b,), generator=g)
    drop = bool(torch.rand((), generator=g) < drop_p)
    eps = seeded_randn((b, *shape), seed_for(seed, step, Streams.LORA, 1), device)
    return t.to(device), eps, drop


class VSDLoss(LossMode):
    """VSD with a LoRA-adapted copy of the prior's UNet; with a reward strategy it is RewardVSD.

    Args:
        guidance_scale: CFG scale of the pretrained prediction (7.5; VSD breaks with SDS's 100).
        weighting: w(t) (``sds``: 1 - abar_t).
        lora_rank: LoRA rank on every attention projection of the copy.
        lora_lr, lora_weight_decay, lora_betas, lora_eps: AdamW settings of the LoRA group (reference
            2D: a separate ``AdamW(lr=3e-4, weight_decay=0)`` with torch's default betas and eps; one AdamW with
            per-group settings is the same update, since AdamW's state and step are per parameter).
        lora_guidance_scale: CFG over the camera condition of the LoRA estimate (threestudio's
            guidance_scale_lora); 1 = a single call with the camera.
        camera_dropout: probability of zeroing the camera condition in a LoRA training step (0.1).
        lora_base: None = LoRA on a copy of the prior's own UNet (single-model path, default); or a Hub id /
            diffusers folder whose ``unet/`` (and ``scheduler/`` for its prediction type) is the LoRA's base,
            e.g. ``stabilityai/stable-diffusion-2-1`` (the 768-px v-prediction model of the 2D reference).
        grad_clip: clamp each field elementwise (None = off).
    """

    name = "vsd"

    def __init__(
        self,
        guidance_scale: float = 7.5,
        weighting: str = "sds",
        lora_rank: int = 4,
        lora_lr: float = 3e-4,
        lora_weight_decay: float = 0.0,
        lora_betas: Sequence[float] = (0.9, 0.999),
        lora_eps: float = 1e-8,
        lora_guidance_scale: float = 1.0,
        camera_dropout: float = 0.1,
        lora_base: Optional[str] = None,
        grad_clip: Optional[float] = None,
    ):
        super().__init__()
        self.guidance_scale = float(guidance_scale)
        self.weighting = getattr(weighting, "value", weighting)
        self.lora_rank = int(lora_rank)
        self.lora_lr, self.lora_weight_decay = float(lora_lr), float(lora_weight_decay)
        self.lora_betas, self.lora_eps = tuple(float(x) for x in lora_betas), float(lora_eps)
        self.lora_guidance_scale = float(lora_guidance_scale)
        self.camera_dropout = float(camera_dropout)
        self.lora_base = lora_base
        self.grad_clip = grad_clip
        self.model: Optional[LoRAUNet] = None

    # ------------------------------------------------------------------ setup
    def setup(self, prior: Prior, reward, device: torch.device, total_steps: int) -> None:
        """Build the LoRA model on ``device`` (once; a resumed run then loads its weights from the checkpoint)."""
        if self.model is not None:
            return
        if prior.num_frames != 1 or prior.uses_camera:
            raise ConfigError("loss", "vsd", f"needs a single-view Stable Diffusion prior, but prior={prior.name!r} is multi-view",
                              "use prior=sd")
        if self.lora_base is None:
            try:
                unet = prior.trainable_copy()
            except NotImplementedError:
                raise ConfigError(
                    "loss", "vsd",
                    f"needs a trainable copy of the prior's UNet for its LoRA, and prior={prior.name!r} ({type(prior).__name__}) "
                    "has none (Prior.trainable_copy)",
                    "use prior=sd (any Stable Diffusion 1.x/2.x checkpoint), or another loss such as loss=sds",
                ) from None
            prediction_type = getattr(prior, "prediction_type", "epsilon")
        else:
            unet, prediction_type = load_lora_base(self.lora_base, prior, device)
        # Seeded from the run seed (seed_everything) but independent of any other draw before setup.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(torch.initial_seed(), 0, Streams.LORA))
            self.model = LoRAUNet(unet, self.lora_rank, prediction_type, getattr(prior, "channels_last", True))

    def param_groups(self) -> list[dict[str, Any]]:
        if self.model is None:
            raise RuntimeError("VSDLoss.setup(prior, ...) must run before the optimiser is built")
        return [{"params": self.model.lora_parameters(), "lr": self.lora_lr, "betas": self.lora_betas, "eps": self.lora_eps,
                 "weight_decay": self.lora_weight_decay, "name": "lora"}]

    # ------------------------------------------------------------------ LoRA estimate and training
    @torch.no_grad()
    def lora_prediction(
        self, x_t: Float[Tensor, "m c h w"], t: int, text: Float[Tensor, "m l d"], camera: Float[Tensor, "m 16"],
        alphas_cumprod: Float[Tensor, "T"], chunk: int,
    ) -> tuple[Float[Tensor, "m c h w"], int]:
        """eps_lora(x_t; y, c) for [m] inputs in chunks of ``chunk`` (0 = all); returns (eps fp32, model evaluations).

        With ``lora_guidance_scale != 1`` it is CFG over the camera: e0 + s (e_cam - e0), e0 with a zero camera.
        """
        m = x_t.shape[0]
        tt = torch.full((m,), t, dtype=torch.long, device=x_t.device)
        per_call = m if chunk <= 0 else max(1, chunk)
        outs, evals = [], 0
        for s in range(0, m, per_call):
            sl = slice(s, min(m, s + per_call))
            e = self.model.eps(x_t[sl], tt[sl], text[sl], camera[sl], alphas_cumprod)
            evals += e.shape[0]
            if self.lora_guidance_scale != 1.0:
                e0 = self.model.eps(x_t[sl], tt[sl], text[sl], torch.zeros_like(camera[sl]), alphas_cumprod)
                e = e0 + self.lora_guidance_scale * (e - e0)
                evals += e.shape[0]
            outs.append(e)
        return torch.cat(outs), evals

    def lora_loss(self, ctx: StepContext, text: Tensor, camera: Tensor) -> Tensor:
        """The LoRA's diffusion loss on the detached latents (ALGORITHMS.md 2.1), differentiable in the LoRA only."""
        prior = ctx.prior
        z = ctx.latents.detach().float()
        b = z.shape[0]
        t, eps, drop = lora_training_draws(ctx.engine.seed, ctx.step, b, z.shape[1:], prior.num_train_timesteps,
                                           self.camera_dropout, z.device)
        cam = torch.zeros_like(camera) if drop else camera
        x_t = prior.add_noise(z, eps, t)
        pred = self.model.raw(x_t, t, text, cam)
        if self.model.prediction_type == "v_prediction":
            a, s = prior.alpha_sigma(t)
            target = a * eps - s * z
        else:
            target = eps
        return F.mse_loss(pred, target)

    # ------------------------------------------------------------------ the step
    def forward(self, ctx: StepContext) -> LossOutput:
        if self.model is None:
            raise RuntimeError("VSDLoss.setup(prior, ...) must run before the first step")
        prior, b = ctx.prior, ctx.latents.shape[0]
        cands = ctx.engine.evaluate(
            ctx.latents, ctx.t, ctx.n_noises, ctx.step, ctx.text, ctx.strategy, ctx.reward_prompts, ctx.camera,
            keep_images=ctx.keep_images,
        )
        n = cands.n
        # The LoRA models the renders of the prompt, conditioned on the camera (threestudio: base prompt, c2w).
        text = prior.encode_text([ctx.base_prompt] * b)
        camera = camera_condition(ctx.camera, b, ctx.latents.device)
        idx = cands.active()
        rows = cands.flat_index(idx)
        k = idx.numel()
        eps_lora, lora_evals = self.lora_prediction(
            cands.noisy[rows], ctx.t, text.repeat(k, 1, 1), camera.repeat(k, 1), prior.alphas_cumprod,
            ctx.engine.chunk_size(cands.noisy),
        )
        with torch.no_grad():
            w = timestep_weight(self.weighting, prior.alphas_cumprod[ctx.t])
            eps_pre = guide(cands.eps_cond[rows], cands.eps_uncond[rows], self.guidance_scale)
            fields = cands.scatter(w * (eps_pre - eps_lora), idx)
        losses, fields = field_losses(ctx.latents, fields, n, self.grad_clip)
        loss_lora = self.lora_loss(ctx, text, camera)
        cands.evals += lora_evals + b
        logs = {
            "grad_norm": combined_field_norm(fields, cands.weights, n, b).detach(),
            "lora_evals": torch.tensor(float(lora_evals), device=ctx.latents.device),
        }
        return LossOutput(candidate_losses=losses, weights=cands.weights, logs=logs, extra={"loss_lora": loss_lora},
                          candidates=cands)


def load_lora_base(source: str, prior: Prior, device: torch.device) -> tuple[nn.Module, str]:
    """A separate LoRA base UNet (``loss.lora_base``): loaded frozen in the prior's dtype, with its prediction type.

    Checks that it fits the prior: same latent channels, same text-embedding width, same noise schedule.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from rewardsds.priors.sd import load_pretrained as _load

    what, hint = "VSD LoRA base UNet", "loss.lora_base"
    unet = _load(what, source, hint, UNet2DConditionModel.from_pretrained, source, subfolder="unet")
    sched = _load(what, source, hint, DDIMScheduler.from_pretrained, source, subfolder="scheduler")
    prediction_type = sched.config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(hint, source, f"has prediction_type {prediction_type!r}", "use an epsilon- or v-prediction SD checkpoint")
    prior_unet = getattr(prior, "unet", None)
    if prior_unet is not None:
        for key in ("in_channels", "cross_attention_dim"):
            if unet.config[key] != prior_unet.config[key]:
                raise ConfigError(hint, source, f"has {key} = {unet.config[key]} but the prior's UNet has {prior_unet.config[key]}",
                                  "use a base of the same family as the prior (e.g. SD 2.1 with SD 2.1-base), or leave loss.lora_base unset")
    ac = sched.alphas_cumprod.float().to(prior.alphas_cumprod.device)
    if ac.shape != prior.alphas_cumprod.shape or not torch.allclose(ac, prior.alphas_cumprod, atol=1e-6):
        raise ConfigError(hint, source, "has a different noise schedule from the prior",
                          "use a base trained with the prior's schedule, or leave loss.lora_base unset")
    dtype = getattr(prior, "dtype", torch.float32)
    unet.to(device=device, dtype=dtype)
    if torch.device(device).type == "cuda" and getattr(prior, "channels_last", False):
        unet.to(memory_format=torch.channels_last)
    return unet, prediction_type
